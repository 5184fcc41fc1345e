package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// readNewc parses a newc archive into name -> (mode, contents).
func readNewc(t *testing.T, b []byte) map[string]struct {
	mode uint32
	data string
} {
	t.Helper()
	out := map[string]struct {
		mode uint32
		data string
	}{}
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if len(b) < off+110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, namesize := uint32(field(1)), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off = align(off + 110 + namesize)
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = struct {
			mode uint32
			data string
		}{mode, string(b[off : off+size])}
		off = align(off + size)
	}
}

// A tree merged with -rootfs keeps its directories, files (with their
// execute bits) and symbolic links (their targets as contents).
func TestTreeKeepsFilesAndSymlinks(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr", "sbin"), 0o755)
	os.MkdirAll(filepath.Join(src, "lib"), 0o755)
	os.WriteFile(filepath.Join(src, "usr", "sbin", "tool"), []byte("#!"), 0o755)
	os.WriteFile(filepath.Join(src, "lib", "libx.so.1.2"), []byte("elf"), 0o644)
	if err := os.Symlink("libx.so.1.2", filepath.Join(src, "lib", "libx.so.1")); err != nil {
		t.Fatal(err)
	}
	r := newInitramfs()
	if err := r.Tree(src); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := r.Write(&buf); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())
	for name, want := range map[string]struct {
		mode uint32
		data string
	}{
		"usr":             {modeDir | 0o755, ""},
		"usr/sbin/tool":   {modeFile | 0o755, "#!"},
		"lib/libx.so.1.2": {modeFile | 0o644, "elf"},
		"lib/libx.so.1":   {modeSymlink | 0o777, "libx.so.1.2"},
	} {
		if g, ok := got[name]; !ok || g != want {
			t.Errorf("%s: got %+v (present %v), want mode %o data %q", name, g, ok, want.mode, want.data)
		}
	}
}
