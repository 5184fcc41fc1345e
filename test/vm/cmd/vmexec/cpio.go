package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// initramfs collects the files of a newc cpio archive, the format the
// kernel unpacks into its initial root filesystem.
type initramfs struct {
	entries map[string]cpioEntry
}

type cpioEntry struct {
	mode uint32 // type and permission bits
	src  string // host file to copy (regular files)
	data []byte // contents, when src is empty
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000 // includes modeFile's bit: written like a file
)

func newInitramfs() *initramfs {
	return &initramfs{entries: map[string]cpioEntry{}}
}

// addDirs adds p's parent directories.
func (r *initramfs) addDirs(p string) {
	for d := path.Dir(p); d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if _, ok := r.entries[d]; !ok {
			r.entries[d] = cpioEntry{mode: modeDir | 0o755}
		}
	}
}

// Dir adds an empty directory.
func (r *initramfs) Dir(p string) {
	p = strings.TrimPrefix(p, "/")
	r.addDirs(p)
	r.entries[p] = cpioEntry{mode: modeDir | 0o755}
}

// File adds the host file src as p.
func (r *initramfs) File(p, src string, perm uint32) {
	p = strings.TrimPrefix(p, "/")
	r.addDirs(p)
	r.entries[p] = cpioEntry{mode: modeFile | perm, src: src}
}

// Symlink adds a symbolic link p pointing at target.
func (r *initramfs) Symlink(p, target string) {
	p = strings.TrimPrefix(p, "/")
	r.addDirs(p)
	// newc stores a link's target as its contents.
	r.entries[p] = cpioEntry{mode: modeSymlink | 0o777, data: []byte(target)}
}

// Tree adds the directories, regular files and symbolic links below src,
// at the same paths below / (a root filesystem to merge into the VM's).
func (r *initramfs) Tree(src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		dst := "/" + filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			r.Dir(dst)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			r.Symlink(dst, target)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			r.File(dst, p, uint32(info.Mode().Perm()))
		}
		return nil
	})
}

// Bytes adds a file with the given contents.
func (r *initramfs) Bytes(p string, data []byte, perm uint32) {
	p = strings.TrimPrefix(p, "/")
	r.addDirs(p)
	r.entries[p] = cpioEntry{mode: modeFile | perm, data: data}
}

// Write writes the archive. Directories come before their contents because
// the names sort that way.
func (r *initramfs) Write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	names := make([]string, 0, len(r.entries))
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var off int64
	ino := uint32(1)
	for _, n := range names {
		e := r.entries[n]
		var size int64
		var src *os.File
		if e.mode&modeFile != 0 {
			if e.src != "" {
				f, err := os.Open(e.src)
				if err != nil {
					return err
				}
				st, err := f.Stat()
				if err != nil {
					f.Close()
					return err
				}
				src, size = f, st.Size()
			} else {
				size = int64(len(e.data))
			}
		}
		nw, err := writeHeader(bw, n, ino, e.mode, size)
		off += nw
		if err == nil {
			if src != nil {
				var c int64
				c, err = io.Copy(bw, src)
				off += c
				src.Close()
			} else if size > 0 {
				_, err = bw.Write(e.data)
				off += size
			}
		}
		if err == nil {
			err = pad(bw, &off)
		}
		if err != nil {
			return err
		}
		ino++
	}
	if _, err := writeHeader(bw, "TRAILER!!!", 0, 0, 0); err != nil {
		return err
	}
	return bw.Flush()
}

// writeHeader writes a newc header and the padded name; it returns the
// bytes written.
func writeHeader(w io.Writer, name string, ino, mode uint32, size int64) (int64, error) {
	nlink := 1
	if mode&modeDir != 0 {
		nlink = 2
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	n := len(h) + len(name) + 1
	padded := (n + 3) &^ 3
	buf := make([]byte, 0, padded)
	buf = append(buf, h...)
	buf = append(buf, name...)
	buf = append(buf, make([]byte, padded-len(buf))...)
	_, err := w.Write(buf)
	return int64(padded), err
}

func pad(w io.Writer, off *int64) error {
	n := (4 - *off%4) % 4
	if n == 0 {
		return nil
	}
	_, err := w.Write(make([]byte, n))
	*off += n
	return err
}
