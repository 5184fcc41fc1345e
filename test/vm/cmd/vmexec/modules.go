package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// moduleName normalizes a module's name the way the kernel does.
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// resolveModules returns the module files to load, dependencies first, for
// the wanted modules of the kernel whose modules live in dir
// (lib/modules/<release>). Debian's packages ship no modules.dep: the
// dependencies come from each module's "depends=" modinfo field. Modules
// built into the kernel (modules.builtin) are left out.
func resolveModules(dir string, wanted []string) ([]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			files[moduleName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				builtin[moduleName(l)] = true
			}
		}
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		if builtin[name] {
			state[name] = 2
			return nil
		}
		p, ok := files[name]
		if !ok {
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is not in %s", name, from, dir)
			}
			return fmt.Errorf("module %s is not in %s and not built in", name, dir)
		}
		state[name] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the depends= field of a module's .modinfo section.
func moduleDepends(p string) ([]string, error) {
	var raw []byte
	var err error
	switch {
	case strings.HasSuffix(p, ".xz"):
		raw, err = exec.Command("xz", "-dc", p).Output()
	case strings.HasSuffix(p, ".zst"):
		raw, err = exec.Command("zstd", "-dc", p).Output()
	case strings.HasSuffix(p, ".gz"):
		raw, err = exec.Command("gzip", "-dc", p).Output()
	default:
		raw, err = os.ReadFile(p)
	}
	if err != nil {
		return nil, fmt.Errorf("reading module %s: %w", p, err)
	}
	f, err := elf.NewFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", p, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", p, err)
	}
	for _, field := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(field, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
