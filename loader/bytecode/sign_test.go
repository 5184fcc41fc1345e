package bytecode

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/bpfmount/bpfmount/internal/fault"
)

func mustVerifier(t *testing.T, pem []byte) *Verifier {
	t.Helper()
	v, err := NewVerifier(pem)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustSigner(t *testing.T, pem, pass []byte) *Signer {
	t.Helper()
	s, err := NewSigner(pem, pass)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSignatures(t *testing.T) {
	ctx := ctxT(t)
	ts := newTestServer(t)
	priv, pub, _ := genKey(t)
	priv2, pub2, _ := genKey(t)
	v := mustVerifier(t, pub)
	signer, signer2 := mustSigner(t, priv, nil), mustSigner(t, priv2, nil)

	signedD := ts.push(t, "bpf/signed:v1", buildTest(t, "s.o"))
	ts.push(t, "bpf/unsigned:v1", buildTest(t, "u.o"))
	ts.push(t, "bpf/wrongkey:v1", buildTest(t, "w.o"))
	otherD := ts.push(t, "bpf/forged:v1", buildTest(t, "f.o"))

	tool := newReg(t, RegistryOptions{})
	if d, err := tool.Sign(ctx, Request{Reference: ts.ref("bpf/signed:v1")}, signer); err != nil || d != signedD {
		t.Fatalf("sign: %s %v", d, err)
	}
	if _, err := tool.Sign(ctx, Request{Reference: ts.ref("bpf/wrongkey:v1")}, signer2); err != nil {
		t.Fatal(err)
	}
	// A valid signature by the trusted key, but over another image's
	// digest, filed under this image.
	forged, _ := tool.parseRef(ts.ref("bpf/forged:v1"))
	if err := tool.pushSignature(ctx, "forged", forged.Context(), otherD, signedD, signer, authn.Anonymous); err != nil {
		t.Fatal(err)
	}

	t.Run("required node-wide", func(t *testing.T) {
		r := newReg(t, RegistryOptions{Verifier: v, RequireSignature: true})
		im, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/signed:v1")})
		if err != nil || !im.Signed {
			t.Fatalf("signed image: %v %v", im, err)
		}
		_, err = r.Fetch(ctx, Request{Reference: ts.ref("bpf/unsigned:v1")})
		wantKind(t, err, fault.PermissionDenied, "bpf/unsigned:v1", "not signed")
		_, err = r.Fetch(ctx, Request{Reference: ts.ref("bpf/wrongkey:v1")})
		wantKind(t, err, fault.PermissionDenied, "bpf/wrongkey:v1", "none valid")
		_, err = r.Fetch(ctx, Request{Reference: ts.ref("bpf/forged:v1")})
		wantKind(t, err, fault.PermissionDenied, "bpf/forged:v1", "none valid")
		// Cached, they stay refused.
		_, err = r.Fetch(ctx, Request{Reference: ts.ref("bpf/unsigned:v1"), Policy: PullNever})
		wantKind(t, err, fault.PermissionDenied)
	})

	t.Run("reported, not required", func(t *testing.T) {
		r := newReg(t, RegistryOptions{Verifier: v})
		for ref, want := range map[string]bool{"bpf/signed:v1": true, "bpf/unsigned:v1": false, "bpf/wrongkey:v1": false, "bpf/forged:v1": false} {
			im, err := r.Fetch(ctx, Request{Reference: ts.ref(ref)})
			if err != nil || im.Signed != want {
				t.Errorf("%s: %v %v, want signed=%v", ref, im, err, want)
			}
		}
	})

	t.Run("required per request", func(t *testing.T) {
		r := newReg(t, RegistryOptions{})
		im, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/signed:v1")})
		if err != nil || im.Signed {
			t.Fatalf("no verifier: %v %v", im, err)
		}
		im, err = r.FetchWith(ctx, Request{Reference: ts.ref("bpf/signed:v1")}, FetchOptions{RequireSignature: true, Verifier: v})
		if err != nil || !im.Signed {
			t.Fatalf("signed: %v %v", im, err)
		}
		_, err = r.FetchWith(ctx, Request{Reference: ts.ref("bpf/unsigned:v1")}, FetchOptions{RequireSignature: true, Verifier: v})
		wantKind(t, err, fault.PermissionDenied, "not signed")
		_, err = r.FetchWith(ctx, Request{Reference: ts.ref("bpf/signed:v1")}, FetchOptions{RequireSignature: true})
		wantKind(t, err, fault.PermissionDenied, "no verification key")
		// Another rule trusts the other key.
		im, err = r.FetchWith(ctx, Request{Reference: ts.ref("bpf/wrongkey:v1")}, FetchOptions{RequireSignature: true, Verifier: mustVerifier(t, pub2)})
		if err != nil || !im.Signed {
			t.Fatalf("other key: %v %v", im, err)
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		both := mustVerifier(t, append(append([]byte{}, pub2...), pub...))
		r := newReg(t, RegistryOptions{Verifier: both, RequireSignature: true})
		for _, ref := range []string{"bpf/signed:v1", "bpf/wrongkey:v1"} {
			if im, err := r.Fetch(ctx, Request{Reference: ts.ref(ref)}); err != nil || !im.Signed {
				t.Errorf("%s: %v %v", ref, im, err)
			}
		}
	})

	t.Run("signed after caching", func(t *testing.T) {
		d := ts.push(t, "bpf/late:v1", buildTest(t, "late.o"))
		r := newReg(t, RegistryOptions{Verifier: v})
		if im, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/late:v1")}); err != nil || im.Signed {
			t.Fatalf("before signing: %v %v", im, err)
		}
		if got, err := tool.Sign(ctx, Request{Reference: ts.ref("bpf/late:v1")}, signer); err != nil || got != d {
			t.Fatal(got, err)
		}
		// Required now: the registry is asked again despite the cache.
		im, err := r.FetchWith(ctx, Request{Reference: ts.ref("bpf/late:v1")}, FetchOptions{RequireSignature: true})
		if err != nil || !im.Signed {
			t.Fatalf("after signing: %v %v", im, err)
		}
	})

	t.Run("multi-platform index signed", func(t *testing.T) {
		img := buildTest(t, "idx.o")
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: nodePlatform().Architecture}}})
		indexD := ts.pushIndex(t, "bpf/index:v1", idx)
		if got, err := tool.Sign(ctx, Request{Reference: ts.ref("bpf/index:v1")}, signer); err != nil || got != indexD {
			t.Fatalf("sign index: %s %v (index %s)", got, err, indexD)
		}
		r := newReg(t, RegistryOptions{Verifier: v, RequireSignature: true})
		im, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/index:v1")})
		if err != nil || !im.Signed || im.Digest != digestOfImage(t, img) {
			t.Fatalf("%v %v", im, err)
		}
	})

	t.Run("signature written by hand in cosign's format", func(t *testing.T) {
		d := ts.push(t, "bpf/byhand:v1", buildTest(t, "byhand.o"))
		_, _, key := genKey(t)
		pushHandSignature(t, ts, "bpf/byhand", d, key)
		pubDER, _ := cryptoutils.MarshalPublicKeyToPEM(&key.PublicKey)
		r := newReg(t, RegistryOptions{Verifier: mustVerifier(t, pubDER), RequireSignature: true})
		if im, err := r.Fetch(ctx, Request{Reference: ts.ref("bpf/byhand:v1")}); err != nil || !im.Signed {
			t.Fatalf("%v %v", im, err)
		}
	})

	t.Run("our signature image has cosign's shape", func(t *testing.T) {
		ref, _ := name.ParseReference(ts.ref("bpf/signed:" + sigTag(signedD)))
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := img.Manifest()
		if len(m.Layers) != 1 || m.Layers[0].MediaType != SimpleSigningMediaType || m.Layers[0].Annotations[SignatureAnnotation] == "" {
			t.Fatalf("manifest %+v", m)
		}
		l, _ := img.LayerByDigest(m.Layers[0].Digest)
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		payload, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(payload), `"docker-manifest-digest":"`+signedD+`"`) || !strings.Contains(string(payload), `"type":"cosign container image signature"`) {
			t.Errorf("payload %s", payload)
		}
	})

	t.Run("offline with cached signatures", func(t *testing.T) {
		ts2 := newTestServer(t)
		ts2.push(t, "bpf/off:v1", buildTest(t, "off.o"))
		if _, err := tool.Sign(ctx, Request{Reference: ts2.ref("bpf/off:v1")}, signer); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		r := newReg(t, RegistryOptions{CacheDir: dir, Verifier: v, RequireSignature: true})
		if _, err := r.Fetch(ctx, Request{Reference: ts2.ref("bpf/off:v1")}); err != nil {
			t.Fatal(err)
		}
		r.Close()
		ts2.close()
		r2 := newReg(t, RegistryOptions{CacheDir: dir, Verifier: v, RequireSignature: true})
		for _, p := range []PullPolicy{PullNever, PullIfNotPresent} {
			if im, err := r2.Fetch(ctx, Request{Reference: ts2.ref("bpf/off:v1"), Policy: p}); err != nil || !im.Signed {
				t.Errorf("%s, registry down: %v %v", p, im, err)
			}
		}
		// A key the cached signatures do not match, without the network.
		r2.Close()
		r3 := newReg(t, RegistryOptions{CacheDir: dir, Verifier: mustVerifier(t, pub2), RequireSignature: true})
		_, err := r3.Fetch(ctx, Request{Reference: ts2.ref("bpf/off:v1"), Policy: PullNever})
		wantKind(t, err, fault.PermissionDenied, "none valid")
		// Not required: a cache hit reports unsigned without the network.
		r3.Close()
		r4 := newReg(t, RegistryOptions{CacheDir: dir, Verifier: mustVerifier(t, pub2)})
		if im, err := r4.Fetch(ctx, Request{Reference: ts2.ref("bpf/off:v1")}); err != nil || im.Signed {
			t.Errorf("registry down, signature not required: %v %v", im, err)
		}
	})
}

func TestSigningKeys(t *testing.T) {
	priv, pub, key := genKey(t)
	pass := []byte("key password")
	enc, err := cryptoutils.MarshalPrivateKeyToEncryptedDER(key, func(bool) ([]byte, error) { return pass, nil })
	if err != nil {
		t.Fatal(err)
	}
	encPEM := cryptoutils.PEMEncode(cryptoutils.EncryptedSigstorePrivateKeyPEMType, enc)
	if _, err := NewSigner(encPEM, []byte("wrong")); err == nil {
		t.Error("wrong password accepted")
	}
	ts := newTestServer(t)
	ts.push(t, "bpf/enc:v1", buildTest(t, "enc.o"))
	r := newReg(t, RegistryOptions{Verifier: mustVerifier(t, pub), RequireSignature: true})
	if _, err := r.Sign(ctxT(t), Request{Reference: ts.ref("bpf/enc:v1")}, mustSigner(t, encPEM, pass)); err != nil {
		t.Fatal(err)
	}
	if im, err := r.Fetch(ctxT(t), Request{Reference: ts.ref("bpf/enc:v1")}); err != nil || !im.Signed {
		t.Fatalf("%v %v", im, err)
	}

	for _, bad := range [][]byte{nil, []byte("not pem"), priv} {
		if _, err := NewVerifier(bad); err == nil {
			t.Errorf("NewVerifier accepted %q", bad)
		}
	}
	if _, err := NewSigner(pub, nil); err == nil {
		t.Error("NewSigner accepted a public key")
	}
	if _, err := NewRegistry(RegistryOptions{CacheDir: t.TempDir(), RequireSignature: true}); err == nil {
		t.Error("RequireSignature without a key accepted")
	}
}

// pushHandSignature writes a signature the way cosign lays it out, with the
// standard library only: ECDSA-P256 over SHA-256 of the payload, ASN.1.
func pushHandSignature(t *testing.T, ts *testServer, repo, digest string, key *ecdsa.PrivateKey) {
	t.Helper()
	payload := fmt.Sprintf(`{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, ts.ref(repo), digest)
	sum := sha256.Sum256([]byte(payload))
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer([]byte(payload), "application/vnd.dev.cosign.simplesigning.v1+json"),
		Annotations: map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		t.Fatal(err)
	}
	ts.push(t, repo+":"+strings.Replace(digest, ":", "-", 1)+".sig", img)
}
