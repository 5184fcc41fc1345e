//go:build !bpfmount_cli

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// registryFlags are what the image subcommands need to talk to a registry.
type registryFlags struct {
	dockerConfig string
	plainHTTP    bool
}

func (o *registryFlags) add(cmd *cobra.Command) {
	def := filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json")
	if os.Getenv("DOCKER_CONFIG") == "" {
		if home, err := os.UserHomeDir(); err == nil {
			def = filepath.Join(home, ".docker", "config.json")
		}
	}
	cmd.Flags().StringVar(&o.dockerConfig, "docker-config", def, "docker config.json with registry credentials (inline \"auths\" only)")
	cmd.Flags().BoolVar(&o.plainHTTP, "plain-http", false, "allow plain HTTP to any registry (default: loopback only)")
}

// open returns a Registry on a throw-away cache, and its cleanup.
func (o *registryFlags) open(v *bytecode.Verifier) (*bytecode.Registry, func(), error) {
	dir, err := os.MkdirTemp("", "bpfmount-image-")
	if err != nil {
		return nil, nil, err
	}
	opts := bytecode.RegistryOptions{CacheDir: dir, DockerConfigPath: o.dockerConfig, Verifier: v}
	if o.plainHTTP {
		opts.Insecure = func(string) bool { return true }
	}
	r, err := bytecode.NewRegistry(opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return r, func() { r.Close(); os.RemoveAll(dir) }, nil
}

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, inspect and sign bytecode images (bpfman's image format)",
	}
	cmd.AddCommand(newImageBuildCmd(), newImageInspectCmd(), newImageSignCmd())
	return cmd
}

func newImageBuildCmd() *cobra.Command {
	var (
		out, tag, push string
		programs, maps []string
		reg            registryFlags
	)
	cmd := &cobra.Command{
		Use:   "build (-o DIR [--tag T] | --push REF) [--program NAME=TYPE ...] [--map NAME=TYPE ...] OBJECT.o",
		Short: "Make a bytecode image from an eBPF ELF object",
		Long: `Make a bytecode image (bpfman's v2 format) from an eBPF ELF object and
write it to an OCI layout directory or push it to a registry. Programs and
maps are read from the object unless given. Prints the image digest.`,
		Example: `  bpfmount image build -o /srv/bytecode/xdp-counter --tag v1 xdpcounter_bpfel.o
  bpfmount image build --push registry.example/bpf/xdp-counter:v1 --program xdp_stats=xdp xdpcounter_bpfel.o`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (out == "") == (push == "") {
				return fmt.Errorf("give exactly one of -o DIR or --push REF")
			}
			progs, err := nameTypes("--program", programs)
			if err != nil {
				return err
			}
			mps, err := nameTypes("--map", maps)
			if err != nil {
				return err
			}
			obj, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			img, err := bytecode.Build(obj, filepath.Base(args[0]), progs, mps)
			if err != nil {
				return fmt.Errorf("%s: %v", args[0], err)
			}
			if out != "" {
				dir, err := filepath.Abs(out)
				if err != nil {
					return err
				}
				if err := bytecode.WriteLayout(dir, tag, img); err != nil {
					return err
				}
				d, err := img.Digest()
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s%s:%s\n", bytecode.LayoutScheme, dir, tag)
				fmt.Fprintln(cmd.OutOrStdout(), d.String())
				return nil
			}
			r, done, err := reg.open(nil)
			if err != nil {
				return err
			}
			defer done()
			d, err := r.Push(cmdContext(cmd), bytecode.Request{Reference: push}, img)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), d)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&out, "output", "o", "", "OCI layout directory to write")
	f.StringVar(&tag, "tag", "latest", "tag of the image in the layout")
	f.StringVar(&push, "push", "", "registry reference to push to")
	f.StringArrayVar(&programs, "program", nil, "program NAME=TYPE (repeatable; default: read from the object)")
	f.StringArrayVar(&maps, "map", nil, "map NAME=TYPE (repeatable; default: read from the object)")
	reg.add(cmd)
	return cmd
}

// nameTypes parses NAME=TYPE flags; none gives nil (read from the object).
func nameTypes(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, v := range vals {
		n, t, ok := strings.Cut(v, "=")
		if !ok || !bytecode.IsIdentifier(n) || !bytecode.IsIdentifier(t) {
			return nil, fmt.Errorf("%s %q: want NAME=TYPE, like xdp_stats=xdp", flag, v)
		}
		m[n] = t
	}
	return m, nil
}

func newImageInspectCmd() *cobra.Command {
	var (
		keyPath string
		reg     registryFlags
	)
	cmd := &cobra.Command{
		Use:   "inspect REF",
		Short: "Show a bytecode image: digest, labels, programs, maps, signature",
		Long: `Show a bytecode image. REF is oci:PATH[:TAG] for a local OCI layout or a
registry reference. With --verify-key, the image's cosign signatures are
checked against that public key.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v *bytecode.Verifier
			if keyPath != "" {
				var err error
				if v, err = bytecode.LoadVerifier(keyPath); err != nil {
					return err
				}
			}
			req := bytecode.Request{Reference: args[0], Policy: bytecode.PullAlways}
			var im *bytecode.Image
			var err error
			if bytecode.IsLayout(args[0]) {
				im, err = bytecode.Layout{}.Fetch(cmdContext(cmd), req)
			} else {
				r, done, oerr := reg.open(v)
				if oerr != nil {
					return oerr
				}
				defer done()
				im, err = r.Fetch(cmdContext(cmd), req)
			}
			if err != nil {
				return err
			}
			printImage(cmd, im, keyPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "verify-key", "", "PEM public key to check signatures with")
	reg.add(cmd)
	return cmd
}

func printImage(cmd *cobra.Command, im *bytecode.Image, keyPath string) {
	w := cmd.OutOrStdout()
	progJSON, _ := json.Marshal(im.Programs)
	mapJSON, _ := json.Marshal(im.Maps)
	fmt.Fprintln(w, "reference:", im.Reference)
	fmt.Fprintln(w, "digest:   ", im.Digest)
	fmt.Fprintln(w, "object:   ", len(im.Object), "bytes")
	// v1 images are shown in their v2 equivalent: the form build writes.
	fmt.Fprintln(w, "labels:")
	fmt.Fprintf(w, "  %s=%s\n", bytecode.LabelPrograms, progJSON)
	fmt.Fprintf(w, "  %s=%s\n", bytecode.LabelMaps, mapJSON)
	fmt.Fprintln(w, "programs:")
	for _, p := range im.ProgramNames() {
		fmt.Fprintf(w, "  %s\t%s\n", p, im.Programs[p])
	}
	fmt.Fprintln(w, "maps:")
	for _, m := range im.MapNames() {
		fmt.Fprintf(w, "  %s\t%s\n", m, im.Maps[m])
	}
	switch {
	case bytecode.IsLayout(im.Reference):
		fmt.Fprintln(w, "signature: none (local layouts carry no signature)")
	case keyPath == "":
		fmt.Fprintln(w, "signature: not checked (give --verify-key)")
	case im.Signed:
		fmt.Fprintln(w, "signature: verified with", keyPath)
	default:
		fmt.Fprintln(w, "signature: NOT verified: no signature valid for", keyPath)
	}
}

func newImageSignCmd() *cobra.Command {
	var (
		keyPath string
		reg     registryFlags
	)
	cmd := &cobra.Command{
		Use:   "sign --key KEY.pem REF",
		Short: "Sign a bytecode image in a registry (cosign-compatible, key-based)",
		Long: `Sign the manifest REF resolves to (for a multi-platform image, its index)
with a private key and push the signature next to it, as cosign does with
--key (no transparency log). The key may be PKCS#8, EC or RSA PEM, or a
cosign key (encrypted; its password is read from BPFMOUNT_KEY_PASSWORD or
COSIGN_PASSWORD). Prints the signed digest.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bytecode.IsLayout(args[0]) {
				return fmt.Errorf("%s: only images in a registry can be signed", args[0])
			}
			pemBytes, err := os.ReadFile(keyPath)
			if err != nil {
				return err
			}
			pass := os.Getenv("BPFMOUNT_KEY_PASSWORD")
			if pass == "" {
				pass = os.Getenv("COSIGN_PASSWORD")
			}
			s, err := bytecode.NewSigner(pemBytes, []byte(pass))
			if err != nil {
				return fmt.Errorf("%s: %v", keyPath, err)
			}
			r, done, err := reg.open(nil)
			if err != nil {
				return err
			}
			defer done()
			d, err := r.Sign(cmdContext(cmd), bytecode.Request{Reference: args[0]}, s)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), d)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "PEM private key")
	cmd.MarkFlagRequired("key")
	reg.add(cmd)
	return cmd
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
