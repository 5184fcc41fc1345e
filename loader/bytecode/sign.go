package bytecode

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// Signatures follow cosign's key-based format, checked offline (no
// transparency log, no certificates): the image's repository holds a tag
// "sha256-HEX.sig" whose layers are simple-signing payloads, each with its
// base64 signature in an annotation. A payload names the digest it signs.
const (
	SimpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	SignatureAnnotation    = "dev.cosignproject.cosign/signature"
	simpleSigningType      = "cosign container image signature"
)

// Bounds on what a signature image may make us read.
const (
	maxSignatures    = 64
	maxSignatureSize = 1 << 20
)

type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// Verifier checks signatures with one or more public keys (any may match:
// that allows key rotation).
type Verifier struct {
	keys []signature.Verifier
}

// NewVerifier reads PEM public keys ("PUBLIC KEY": ECDSA, RSA or Ed25519,
// as cosign writes them; "RSA PUBLIC KEY"). Several blocks make several
// accepted keys. Hashing is SHA-256, as cosign does.
func NewVerifier(pemBytes []byte) (*Verifier, error) {
	v := &Verifier{}
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var pub crypto.PublicKey
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		default:
			return nil, fmt.Errorf("signature key: PEM block %q is not a public key", block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("signature key: %v", err)
		}
		if err := cryptoutils.ValidatePubKey(pub); err != nil {
			return nil, fmt.Errorf("signature key: %v", err)
		}
		sv, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("signature key: %v", err)
		}
		v.keys = append(v.keys, sv)
	}
	if len(v.keys) == 0 {
		return nil, errors.New("signature key: no PEM public key found")
	}
	return v, nil
}

// LoadVerifier reads NewVerifier's input from a file.
func LoadVerifier(path string) (*Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := NewVerifier(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return v, nil
}

// verify reports whether one of sigs is a valid signature by one of v's
// keys over a payload naming digest.
func (v *Verifier) verify(sigs []cachedSig, digest string) bool {
	for _, s := range sigs {
		raw, err := base64.StdEncoding.DecodeString(s.Signature)
		if err != nil {
			continue
		}
		for _, k := range v.keys {
			if k.VerifySignature(bytes.NewReader(raw), bytes.NewReader(s.Payload)) != nil {
				continue
			}
			// Only a payload the key signed is worth parsing.
			var p simpleSigning
			if json.Unmarshal(s.Payload, &p) == nil && p.Critical.Image.DockerManifestDigest == digest {
				return true
			}
		}
	}
	return false
}

// Signer makes signatures in cosign's format.
type Signer struct {
	s signature.Signer
}

// NewSigner reads a PEM private key: PKCS#8, EC or RSA (PKCS#1), or one
// encrypted by cosign ("ENCRYPTED SIGSTORE PRIVATE KEY", password needed)
// or PKCS#8-encrypted.
func NewSigner(pemBytes, password []byte) (*Signer, error) {
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(pemBytes, func(bool) ([]byte, error) { return password, nil })
	if err != nil {
		return nil, fmt.Errorf("signing key: %v", err)
	}
	s, err := signature.LoadSigner(priv, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("signing key: %v", err)
	}
	return &Signer{s: s}, nil
}

// Sign signs the manifest req.Reference resolves to at the registry (for a
// multi-platform image, its index, as cosign does) and pushes the
// signature to the "sha256-HEX.sig" tag of the same repository, adding to
// the signatures already there. It returns the signed digest.
func (r *Registry) Sign(ctx context.Context, req Request, s *Signer) (string, error) {
	ref, err := r.parseRef(req.Reference)
	if err != nil {
		return "", err
	}
	auth, _, err := r.credentials(req.Reference, req.DockerConfigJSON, ref.Context())
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	p, err := remote.NewPuller(r.remoteOptions(ctx, auth)...)
	if err != nil {
		return "", classify(ctx, req.Reference, "signing", err)
	}
	desc, err := p.Head(ctx, ref)
	if err != nil {
		return "", classify(ctx, req.Reference, "signing", err)
	}
	d := desc.Digest.String()
	if err := r.pushSignature(ctx, req.Reference, ref.Context(), d, d, s, auth); err != nil {
		return "", err
	}
	return d, nil
}

// pushSignature adds a signature over payloadDigest to the .sig tag of
// tagDigest (the two differ only in tests of forged signatures).
func (r *Registry) pushSignature(ctx context.Context, refStr string, repo name.Repository, tagDigest, payloadDigest string, s *Signer, auth authn.Authenticator) error {
	var p simpleSigning
	p.Critical.Identity.DockerReference = repo.Name()
	p.Critical.Image.DockerManifestDigest = payloadDigest
	p.Critical.Type = simpleSigningType
	payload, err := json.Marshal(&p)
	if err != nil {
		return fault.Wrap(fault.Internal, err)
	}
	sig, err := s.s.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return fault.Errorf(fault.Internal, "image %q: signing: %v", refStr, err)
	}
	tag := repo.Tag(sigTag(tagDigest))
	opts := r.remoteOptions(ctx, auth)
	var base v1.Image
	desc, err := remote.Get(tag, opts...)
	switch {
	case err == nil && desc.MediaType.IsImage():
		if base, err = desc.Image(); err != nil {
			return classify(ctx, refStr, "signing", err)
		}
	case err == nil || isNotFound(err):
		base = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	default:
		return classify(ctx, refStr, "signing", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:       static.NewLayer(payload, SimpleSigningMediaType),
		Annotations: map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err != nil {
		return fault.Wrap(fault.Internal, err)
	}
	if err := remote.Write(tag, img, opts...); err != nil {
		return classify(ctx, refStr, "pushing the signature", err)
	}
	return nil
}

func sigTag(digest string) string { return strings.Replace(digest, ":", "-", 1) + ".sig" }

func sigKey(repo name.Repository, digest string) string { return repo.Name() + "@" + digest }

// fetchSignatureSet reads the signatures over the image and over the index
// it came from, keyed as the cache keeps them.
func fetchSignatureSet(ctx context.Context, p *remote.Puller, repo name.Repository, index, digest string) (map[string][]cachedSig, error) {
	out := map[string][]cachedSig{}
	for _, d := range []string{index, digest} {
		if d == "" {
			continue
		}
		sigs, err := fetchSignatures(ctx, p, repo, d)
		if err != nil {
			return nil, err
		}
		out[sigKey(repo, d)] = sigs
	}
	return out, nil
}

// fetchSignatures reads the simple-signing layers of repo's .sig tag for
// digest; none is an empty result, not an error.
func fetchSignatures(ctx context.Context, p *remote.Puller, repo name.Repository, digest string) ([]cachedSig, error) {
	desc, err := p.Get(ctx, repo.Tag(sigTag(digest)))
	if err != nil {
		if isNotFound(err) {
			return []cachedSig{}, nil
		}
		return nil, err
	}
	if !desc.MediaType.IsImage() {
		return []cachedSig{}, nil
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return []cachedSig{}, nil
	}
	img, err := desc.Image()
	if err != nil {
		return nil, err
	}
	out := []cachedSig{}
	for _, l := range m.Layers {
		sig := l.Annotations[SignatureAnnotation]
		if l.MediaType != SimpleSigningMediaType || sig == "" || l.Size > maxSignatureSize {
			continue
		}
		if len(out) == maxSignatures {
			break
		}
		payload, err := fetchBlob(img, l)
		if err != nil {
			return nil, err
		}
		out = append(out, cachedSig{Payload: payload, Signature: sig})
	}
	return out, nil
}

// checkSignatures reports whether a signature over the image (or the index
// it was picked from) verifies, and how many signatures were found. The
// cache answers first; with network, the registry is asked next.
func (r *Registry) checkSignatures(ctx context.Context, req Request, ref name.Reference, res cacheRef, v *Verifier, network bool) (bool, int, error) {
	repo := ref.Context()
	cands := []string{res.Digest}
	if res.Index != "" {
		cands = []string{res.Index, res.Digest}
	}
	found := 0
	for _, d := range cands {
		sigs := r.cache.signatures(res.Digest, sigKey(repo, d))
		found += len(sigs)
		if v.verify(sigs, d) {
			return true, found, nil
		}
	}
	if !network {
		return false, found, nil
	}
	auth, _, err := r.credentials(req.Reference, req.DockerConfigJSON, repo)
	if err != nil {
		return false, found, err
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	p, err := remote.NewPuller(r.remoteOptions(ctx, auth)...)
	if err != nil {
		return false, found, classify(ctx, req.Reference, "reading signatures", err)
	}
	sigs, err := fetchSignatureSet(ctx, p, repo, res.Index, res.Digest)
	if err != nil {
		return false, found, classify(ctx, req.Reference, "reading signatures", err)
	}
	r.cache.setSignatures(res.Digest, sigs)
	found = 0
	for _, d := range cands {
		s := sigs[sigKey(repo, d)]
		found += len(s)
		if v.verify(s, d) {
			return true, found, nil
		}
	}
	return false, found, nil
}
