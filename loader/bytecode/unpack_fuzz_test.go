package bytecode

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"testing"
)

// FuzzLayer feeds arbitrary layers through unpacking and the object check:
// whatever the bytes, the answer is an object or an error, within the
// unpacked bound, never a panic.
func FuzzLayer(f *testing.F) {
	obj, err := os.ReadFile(testObjectPath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(obj)
	f.Add(tarOfF(f, "prog.o", obj))
	f.Add(gzipOfF(f, tarOfF(f, "prog.o", obj)))
	f.Add(tarOfF(f, "prog.o", obj[:len(obj)/2]))
	f.Fuzz(func(t *testing.T, layer []byte) {
		const max = 1 << 20
		got, err := unpackObject(context.Background(), layer, "", max)
		if err != nil {
			return
		}
		if len(got) > max {
			t.Fatalf("unpacked %d bytes past the %d bound", len(got), max)
		}
		CheckObject(got, &Labels{Programs: map[string]string{"xdp_stats": "xdp"}})
	})
}

func tarOfF(f *testing.F, name string, data []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		f.Fatal(err)
	}
	tw.Write(data)
	if err := tw.Close(); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}

func gzipOfF(f *testing.F, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		f.Fatal(err)
	}
	return buf.Bytes()
}
