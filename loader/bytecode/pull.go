package bytecode

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sort"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/bpfmount/bpfmount/internal/fault"
)

type pullResult struct {
	image       *Image // shared by the waiters: copy before handing out
	digest      string
	index       string
	sigsFetched bool
}

// errBadBlob marks a downloaded blob whose bytes do not match its digest.
type errBadBlob struct{ digest string }

func (e *errBadBlob) Error() string { return "blob " + e.digest + " does not match its digest" }

// pull resolves ref at the registry, downloads the blobs the cache lacks,
// checks the image, and commits it to the cache. Nothing is committed
// unless every step succeeded.
func (r *Registry) pull(ctx context.Context, ref name.Reference, refStr string, auth authn.Authenticator, wantSigs bool) (*pullResult, error) {
	fail := func(err error) error { return classify(ctx, refStr, "pulling", err) }
	p, err := remote.NewPuller(r.remoteOptions(ctx, auth)...)
	if err != nil {
		return nil, fail(err)
	}
	desc, err := r.getManifest(ctx, p, ref, refStr)
	if err != nil {
		return nil, err
	}
	var index string
	if desc.MediaType.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return nil, fault.Errorf(fault.Invalid, "image %q: malformed image index: %v", refStr, err)
		}
		child, err := pickPlatform(refStr, im)
		if err != nil {
			return nil, err
		}
		index = desc.Digest.String()
		if desc, err = r.getManifest(ctx, p, ref.Context().Digest(child.Digest.String()), refStr); err != nil {
			return nil, err
		}
	}
	if !desc.MediaType.IsImage() {
		return nil, fault.Errorf(fault.Invalid, "image %q is a %s, not an image manifest: a bytecode image is one OCI image with one layer", refStr, clip(string(desc.MediaType)))
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q: malformed manifest: %v", refStr, err)
	}
	if err := checkManifest(refStr, desc.MediaType, m, r.maxUnpacked); err != nil {
		return nil, err
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fail(err)
	}
	digest := desc.Digest.String()
	blobs := []v1.Descriptor{m.Config, m.Layers[0]}
	all := []string{digest, m.Config.Digest.String(), m.Layers[0].Digest.String()}

	r.cache.acquire(all)
	var written []string
	committed := false
	defer func() {
		if committed {
			written = nil
		}
		r.cache.release(all, written)
	}()

	// Every blob is checked against its digest as it arrives, and the image
	// is decoded, before anything is written: a cache holds only images
	// that verified.
	data := make([][]byte, len(blobs))
	fetched := make([]bool, len(blobs))
	for i, b := range blobs {
		if data[i], err = r.cache.readBlob(b.Digest.String(), b.Size); err == nil {
			continue
		}
		if data[i], err = fetchBlob(img, b); err != nil {
			var bad *errBadBlob
			if errors.As(err, &bad) {
				return nil, fault.Errorf(fault.Invalid, "image %q: %v: the registry serves corrupted content (or it was damaged in transit); nothing was cached: retry, or push the image again", refStr, err)
			}
			return nil, fail(err)
		}
		fetched[i] = true
	}
	image, err := decode(ctx, refStr, imageParts{digest: digest, manifest: m, config: data[0], layer: data[1]}, r.maxUnpacked)
	if err != nil {
		return nil, err
	}
	for i, b := range blobs {
		if !fetched[i] {
			continue
		}
		d := b.Digest.String()
		if err := r.cache.writeBlob(d, data[i]); err != nil {
			return nil, fault.Errorf(fault.Internal, "image %q: writing the image cache: %v", refStr, err)
		}
		written = append(written, d)
	}
	if _, err := r.cache.readBlob(digest, int64(len(desc.Manifest))); err != nil {
		if err := r.cache.writeBlob(digest, desc.Manifest); err != nil {
			return nil, fault.Errorf(fault.Internal, "image %q: writing the image cache: %v", refStr, err)
		}
		written = append(written, digest)
	}

	res := &pullResult{image: image, digest: digest, index: index}
	entry := &cacheEntry{
		MediaType:    desc.MediaType,
		ManifestSize: int64(len(desc.Manifest)),
		Blobs:        []cacheBlob{{m.Config.Digest.String(), m.Config.Size}, {m.Layers[0].Digest.String(), m.Layers[0].Size}},
		LastUsed:     r.now(),
	}
	if wantSigs {
		// A failed lookup is not fatal here: a fetch that needs the
		// signature asks again and reports the error itself.
		if sigs, err := fetchSignatureSet(ctx, p, ref.Context(), index, digest); err == nil {
			entry.Signatures = sigs
			res.sigsFetched = true
		}
	}
	if err := r.cache.commit(digest, entry, []string{ref.Name()}, cacheRef{Digest: digest, Index: index}); err != nil {
		return nil, fault.Errorf(fault.Internal, "image %q: %v", refStr, err)
	}
	committed = true
	return res, nil
}

// fetchBlob downloads one blob of img and checks it against b.
func fetchBlob(img v1.Image, b v1.Descriptor) ([]byte, error) {
	l, err := img.LayerByDigest(b.Digest)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, b.Size+1))
	n := int64(len(data))
	// go-containerregistry reports a digest mismatch as a read error at the
	// end; a full-length read with the wrong hash is corruption, not a
	// network failure.
	if n > b.Size || n == b.Size && digestOf(data) != b.Digest.String() {
		return nil, &errBadBlob{b.Digest.String()}
	}
	if err != nil {
		return nil, err
	}
	if n != b.Size {
		return nil, fmt.Errorf("blob %s: got %d bytes, want %d", b.Digest, n, b.Size)
	}
	return data, nil
}

// nodePlatform is the platform multi-platform indexes are resolved to.
func nodePlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

func pickPlatform(ref string, im *v1.IndexManifest) (*v1.Descriptor, error) {
	want := nodePlatform()
	var have []string
	for i, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		if d.Platform.OS == want.OS && d.Platform.Architecture == want.Architecture {
			return &im.Manifests[i], nil
		}
		have = append(have, d.Platform.OS+"/"+d.Platform.Architecture)
	}
	sort.Strings(have)
	return nil, fault.Errorf(fault.NotFound, "image %q has no variant for %s/%s (it has: %s): build and push the image for this architecture",
		ref, want.OS, want.Architecture, clipList(have))
}

// classify turns a go-containerregistry or network error into a fault
// naming the image and what to do. ctx is the pull's own context.
func classify(ctx context.Context, ref, op string, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fault.Errorf(fault.Unavailable, "image %q: timed out %s: the registry is slow or unreachable; retry later", ref, op)
	case errors.Is(ctx.Err(), context.Canceled):
		return fault.Errorf(fault.Canceled, "image %q: %s cancelled: %w", ref, op, ctx.Err())
	}
	var te *transport.Error
	if errors.As(err, &te) {
		codes := map[transport.ErrorCode]bool{}
		for _, d := range te.Errors {
			codes[d.Code] = true
		}
		switch {
		case te.StatusCode == http.StatusUnauthorized || codes[transport.UnauthorizedErrorCode]:
			return fault.Errorf(fault.PermissionDenied, "image %q: the registry requires credentials or refused the ones given (HTTP %d) while %s: give the pod a pull secret (nodePublishSecretRef) or fix the node's registry credentials", ref, te.StatusCode, op)
		case te.StatusCode == http.StatusForbidden || codes[transport.DeniedErrorCode]:
			return fault.Errorf(fault.PermissionDenied, "image %q: the registry denied access (HTTP %d) while %s: the credentials lack permission on this repository", ref, te.StatusCode, op)
		case te.StatusCode == http.StatusNotFound || codes[transport.NameUnknownErrorCode] || codes[transport.ManifestUnknownErrorCode] || codes[transport.BlobUnknownErrorCode]:
			return fault.Errorf(fault.NotFound, "image %q not found at the registry (%s): check the repository name and the tag or digest", ref, summary(te))
		case codes[transport.NameInvalidErrorCode] || codes[transport.TagInvalidErrorCode] || codes[transport.ManifestInvalidErrorCode] || codes[transport.DigestInvalidErrorCode]:
			return fault.Errorf(fault.Invalid, "image %q: the registry rejected the request (%s)", ref, summary(te))
		}
		return fault.Errorf(fault.Unavailable, "image %q: the registry failed while %s (%s): retry later", ref, op, summary(te))
	}
	if isNetworkError(err) {
		return fault.Errorf(fault.Unavailable, "image %q: cannot reach the registry while %s: %v: check the registry address and the node's network", ref, op, err)
	}
	return fault.Errorf(fault.Unavailable, "image %q: %s: %v", ref, op, err)
}

func summary(te *transport.Error) string {
	if len(te.Errors) > 0 {
		return fmt.Sprintf("HTTP %d %s", te.StatusCode, te.Errors[0].String())
	}
	return fmt.Sprintf("HTTP %d", te.StatusCode)
}

func isNetworkError(err error) bool {
	var ne net.Error
	var ue *url.Error
	var ce *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.As(err, &ce) || errors.As(err, &ua) || errors.As(err, &hn)
}

func isNotFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}
