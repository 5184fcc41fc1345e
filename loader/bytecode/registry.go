package bytecode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/singleflight"

	"github.com/bpfmount/bpfmount/internal/fault"
)

// DefaultPullTimeout bounds a pull when RegistryOptions.PullTimeout is 0.
const DefaultPullTimeout = 2 * time.Minute

// manifestTimeout bounds the download of one manifest or index: a few KiB
// that a healthy registry sends at once. A registry that drips them is cut
// off well before the pull's own timeout.
const manifestTimeout = 30 * time.Second

// Events passed to RegistryOptions.Observe.
const (
	// EventPull: the registry was contacted for an image and answered (once
	// per shared pull, whatever the number of waiters).
	EventPull = "pull"
	// EventCacheHit: a fetch was served from the cache without the network.
	EventCacheHit = "cache_hit"
	// EventPullError: a pull failed (once per shared pull).
	EventPullError = "pull_error"
	// EventEvict: an image was evicted from the cache.
	EventEvict = "evict"
)

// RegistryOptions configure a Registry.
type RegistryOptions struct {
	// CacheDir holds the image cache (required). One process at a time may
	// use it.
	CacheDir string
	// MaxCacheBytes bounds the cache; 0 means unlimited. Least recently used
	// images that no volume uses (see InUse) are evicted past it.
	MaxCacheBytes int64
	// PullTimeout bounds one pull (0: DefaultPullTimeout).
	PullTimeout time.Duration
	// MaxUnpackedBytes bounds a layer's decompressed size, for registry
	// images and local layouts alike (0: DefaultMaxUnpackedBytes; at most
	// MaxObjectSize plus 1 MiB). A layer that inflates past it is refused.
	MaxUnpackedBytes int64
	// DockerConfigPath names a node-wide docker config.json with registry
	// credentials (optional; a missing file means none). It is read at each
	// pull; only inline "auths" entries are used.
	DockerConfigPath string
	// Verifier checks cosign signatures; nil checks none.
	Verifier *Verifier
	// RequireSignature makes every fetch fail with fault.PermissionDenied
	// unless a signature verifies with Verifier.
	RequireSignature bool
	// InUse returns the digests some volume uses; they are never evicted.
	// It is called from a background goroutine, never from within Fetch.
	InUse func() map[string]bool
	// Observe, if set, receives the Event* names; it must not block.
	Observe func(event string)
	// Insecure reports whether plain HTTP may be used for a registry host
	// ("host" or "host:port", as in the reference). nil allows it only for
	// 127.0.0.1, localhost and [::1].
	Insecure func(host string) bool
}

// FetchOptions adjust one fetch beyond the node-wide RegistryOptions. The
// policy layer uses them for per-rule signature requirements.
type FetchOptions struct {
	// RequireSignature fails the fetch with fault.PermissionDenied unless a
	// signature over the image verifies (in addition to the node-wide
	// RegistryOptions.RequireSignature).
	RequireSignature bool
	// Verifier, if set, checks signatures instead of
	// RegistryOptions.Verifier.
	Verifier *Verifier
}

// Registry fetches bytecode images from OCI registries through a
// content-addressed cache on disk. It also serves `oci:` references through
// Layout. It is safe for concurrent use.
type Registry struct {
	opts        RegistryOptions
	timeout     time.Duration
	maxUnpacked int64
	// manifestTimeout is the package constant but for tests.
	manifestTimeout time.Duration
	cache           *cache
	transport       http.RoundTripper
	now             func() time.Time

	group     singleflight.Group
	flightMu  sync.Mutex
	flights   map[string]*flight
	flightSeq uint64

	pruneMu sync.Mutex // one eviction at a time
	bgMu    sync.Mutex
	pruning bool
	again   bool
	closed  bool
	bg      sync.WaitGroup
}

// flight is the context of a pull shared by several fetches: it ends when
// the timeout hits or when every waiter has gone, never because one of
// several waiters gave up.
type flight struct {
	ctx     context.Context
	cancel  context.CancelFunc
	waiters int
	id      uint64
}

var _ Fetcher = (*Registry)(nil)

// NewRegistry opens (or creates) the cache at opts.CacheDir, drops
// downloads a crash interrupted, and returns a Registry.
func NewRegistry(opts RegistryOptions) (*Registry, error) {
	if opts.CacheDir == "" {
		return nil, errors.New("image cache: no cache directory given")
	}
	if opts.MaxCacheBytes < 0 {
		return nil, fmt.Errorf("image cache: negative size bound %d", opts.MaxCacheBytes)
	}
	if opts.RequireSignature && opts.Verifier == nil {
		return nil, errors.New("image signatures are required but no verification key is given")
	}
	if opts.MaxUnpackedBytes < 0 || opts.MaxUnpackedBytes > maxUnpackedLimit {
		return nil, fmt.Errorf("image unpacked-size bound %d is out of range 1..%d (0: the default, %d)", opts.MaxUnpackedBytes, maxUnpackedLimit, DefaultMaxUnpackedBytes)
	}
	r := &Registry{opts: opts, timeout: opts.PullTimeout, maxUnpacked: opts.MaxUnpackedBytes,
		manifestTimeout: manifestTimeout, now: time.Now, flights: map[string]*flight{}}
	if r.timeout <= 0 {
		r.timeout = DefaultPullTimeout
	}
	if r.maxUnpacked == 0 {
		r.maxUnpacked = DefaultMaxUnpackedBytes
	}
	c, err := openCache(opts.CacheDir, func() time.Time { return r.now() })
	if err != nil {
		return nil, err
	}
	r.cache = c
	inner := remote.DefaultTransport
	if t, ok := inner.(*http.Transport); ok {
		inner = t.Clone()
	}
	r.transport = &httpGuard{inner: inner, allow: r.allowHTTP, timeout: func() time.Duration { return r.manifestTimeout }}
	return r, nil
}

// Close waits for background evictions and saves the cache index. The
// Registry must not be used afterwards.
func (r *Registry) Close() error {
	r.bgMu.Lock()
	r.closed = true
	r.bgMu.Unlock()
	r.bg.Wait()
	return r.cache.close()
}

// Fetch resolves req to an image: from the cache or the registry as
// req.Policy says, checking signatures as the RegistryOptions say.
//
// A cached image is served to any request for it under IfNotPresent and
// Never, whatever its credentials, as kubelet does with container images;
// use Always where a pod must prove its own access.
func (r *Registry) Fetch(ctx context.Context, req Request) (*Image, error) {
	return r.FetchWith(ctx, req, FetchOptions{})
}

// FetchWith is Fetch with per-request options. With a signature required
// (node-wide or by fo), an image with no signature that verifies is a
// fault.PermissionDenied error; otherwise Image.Signed says whether one did.
func (r *Registry) FetchWith(ctx context.Context, req Request, fo FetchOptions) (*Image, error) {
	verifier := fo.Verifier
	if verifier == nil {
		verifier = r.opts.Verifier
	}
	require := r.opts.RequireSignature || fo.RequireSignature
	if IsLayout(req.Reference) {
		if require {
			return nil, fault.Errorf(fault.PermissionDenied, "image %q: a signature is required, and local OCI layouts carry none: push the image to a registry and sign it", req.Reference)
		}
		return Layout{MaxUnpackedBytes: r.maxUnpacked}.Fetch(ctx, req)
	}
	if err := ctx.Err(); err != nil {
		return nil, fault.Errorf(fault.Canceled, "image %q: %w", req.Reference, err)
	}
	policy := req.Policy
	switch policy {
	case "":
		policy = PullIfNotPresent
	case PullAlways, PullIfNotPresent, PullNever:
	default:
		return nil, fault.Errorf(fault.Invalid, "image %q: unknown pull policy %q (use Always, IfNotPresent or Never)", req.Reference, req.Policy)
	}
	if require && verifier == nil {
		return nil, fault.Errorf(fault.PermissionDenied, "image %q: a signature is required but no verification key is configured on this node", req.Reference)
	}
	ref, err := r.parseRef(req.Reference)
	if err != nil {
		return nil, err
	}
	var digestID string
	if d, ok := ref.(name.Digest); ok {
		digestID = d.DigestStr()
	}

	var (
		img         *Image
		resolved    cacheRef
		pulled      bool
		sigsFetched bool
	)
	if policy != PullAlways {
		if cr, ok := r.cache.lookup(ref.Name(), digestID); ok {
			im, err := r.loadCached(ctx, req.Reference, cr.Digest)
			switch {
			case err == nil:
				img, resolved = im, cr
				r.observe(EventCacheHit)
			case !isCacheMiss(err):
				return nil, err
			}
		}
		if img == nil && policy == PullNever {
			return nil, fault.Errorf(fault.Precondition, "image %q is not in this node's image cache and its pull policy is Never: pull it once with policy IfNotPresent or Always", req.Reference)
		}
	}
	if img == nil {
		res, err := r.sharedPull(ctx, ref, req, verifier != nil)
		if err != nil {
			return nil, err
		}
		img, resolved, pulled, sigsFetched = res.image, cacheRef{Digest: res.digest, Index: res.index}, true, res.sigsFetched
	}

	out := &Image{
		Reference: req.Reference,
		Digest:    img.Digest,
		Object:    img.Object,
		Programs:  maps.Clone(img.Programs),
		Maps:      maps.Clone(img.Maps),
	}
	if verifier == nil {
		return out, nil
	}
	// Signatures come from the cache first. The registry is asked when the
	// pull that served this fetch did not read them, or on a cache hit when
	// a signature is required (one may have been added since): a hit that
	// needs none must not wait on the network. Never under policy Never.
	network := pulled && !sigsFetched || !pulled && require && policy != PullNever
	signed, found, err := r.checkSignatures(ctx, req, ref, resolved, verifier, network)
	if err != nil && require {
		return nil, err
	}
	out.Signed = signed
	if require && !signed {
		if found == 0 {
			return nil, fault.Errorf(fault.PermissionDenied, "image %q (%s) is not signed, and a signature is required: sign it with a trusted key (bpfmount image sign --key KEY %s)", req.Reference, out.Digest, req.Reference)
		}
		return nil, fault.Errorf(fault.PermissionDenied, "image %q (%s) has %d signature(s), none valid for this digest with a trusted key: sign it with a trusted key", req.Reference, out.Digest, found)
	}
	return out, nil
}

// loadCached rebuilds a cached image; a damaged or vanished entry is a
// cache miss (see isCacheMiss).
func (r *Registry) loadCached(ctx context.Context, ref, digest string) (*Image, error) {
	parts, err := r.cache.load(digest)
	if err != nil {
		return nil, err
	}
	im, err := decode(ctx, ref, parts, r.maxUnpacked)
	if err != nil {
		return nil, err
	}
	r.cache.touch(digest)
	return im, nil
}

func isCacheMiss(err error) bool {
	var c *errCorrupt
	return errors.As(err, &c) || errors.Is(err, fs.ErrNotExist)
}

// sharedPull pulls once for all concurrent fetches of the same reference
// with the same credentials.
func (r *Registry) sharedPull(ctx context.Context, ref name.Reference, req Request, wantSigs bool) (*pullResult, error) {
	auth, credKey, err := r.credentials(req.Reference, req.DockerConfigJSON, ref.Context())
	if err != nil {
		return nil, err
	}
	key := ref.Name() + "\x00" + credKey

	r.flightMu.Lock()
	f := r.flights[key]
	if f == nil {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
		r.flightSeq++
		f = &flight{ctx: fctx, cancel: cancel, id: r.flightSeq}
		r.flights[key] = f
	}
	f.waiters++
	r.flightMu.Unlock()
	defer func() {
		r.flightMu.Lock()
		if f.waiters--; f.waiters == 0 {
			f.cancel()
			if r.flights[key] == f {
				delete(r.flights, key)
			}
		}
		r.flightMu.Unlock()
	}()

	// The singleflight key names the flight, not just the reference: a
	// pull whose waiters all left is being cancelled, and a newcomer must
	// start afresh rather than join it and inherit its cancellation.
	ch := r.group.DoChan(fmt.Sprintf("%s\x00%d", key, f.id), func() (any, error) {
		res, err := r.pull(f.ctx, ref, req.Reference, auth, wantSigs)
		if err != nil {
			r.observe(EventPullError)
			return nil, err
		}
		r.observe(EventPull)
		r.schedulePrune()
		return res, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*pullResult), nil
	case <-ctx.Done():
		return nil, fault.Errorf(fault.Canceled, "image %q: fetch abandoned: %w", req.Reference, ctx.Err())
	}
}

// Prune evicts least recently used images that no volume uses (InUse)
// until the cache fits MaxCacheBytes, and returns their digests. Pulls
// start it in the background; call it to evict now.
func (r *Registry) Prune() []string {
	r.pruneMu.Lock()
	defer r.pruneMu.Unlock()
	if r.opts.MaxCacheBytes <= 0 {
		return nil
	}
	var inUse map[string]bool
	if r.opts.InUse != nil {
		inUse = r.opts.InUse()
	}
	evicted := r.cache.evict(r.opts.MaxCacheBytes, inUse)
	for range evicted {
		r.observe(EventEvict)
	}
	return evicted
}

// schedulePrune runs Prune in the background, so that InUse is never called
// from within a Fetch (its caller may hold the lock InUse needs).
func (r *Registry) schedulePrune() {
	if r.opts.MaxCacheBytes <= 0 {
		return
	}
	r.bgMu.Lock()
	defer r.bgMu.Unlock()
	if r.closed {
		return
	}
	if r.pruning {
		r.again = true
		return
	}
	r.pruning = true
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		for {
			r.Prune()
			r.bgMu.Lock()
			if !r.again {
				r.pruning = false
				r.bgMu.Unlock()
				return
			}
			r.again = false
			r.bgMu.Unlock()
		}
	}()
}

// Push writes img to the registry at req.Reference with req's (or the
// node's) credentials and returns its digest.
func (r *Registry) Push(ctx context.Context, req Request, img v1.Image) (string, error) {
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
	if err := remote.Write(ref, img, r.remoteOptions(ctx, auth)...); err != nil {
		return "", classify(ctx, req.Reference, "pushing", err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", fault.Wrap(fault.Invalid, err)
	}
	return d.String(), nil
}

func (r *Registry) observe(event string) {
	if r.opts.Observe != nil {
		r.opts.Observe(event)
	}
}

// parseRef parses an OCI reference; hosts allowed plain HTTP are marked so
// that go-containerregistry tries it.
func (r *Registry) parseRef(s string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, fault.Errorf(fault.Invalid, "image %q is not a valid OCI reference (like registry.example/bpf/xdp-counter:v1 or …@sha256:HEX): %v", s, err)
	}
	if r.allowHTTP(ref.Context().RegistryStr()) {
		if ref, err = name.ParseReference(s, name.Insecure); err != nil {
			return nil, fault.Errorf(fault.Invalid, "image %q: %v", s, err)
		}
	}
	return ref, nil
}

func (r *Registry) allowHTTP(host string) bool {
	if r.opts.Insecure != nil {
		return r.opts.Insecure(host)
	}
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	return h == "127.0.0.1" || h == "localhost" || h == "::1"
}

func (r *Registry) remoteOptions(ctx context.Context, auth authn.Authenticator) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuth(auth),
		remote.WithTransport(r.transport),
		remote.WithPlatform(nodePlatform()),
		remote.WithUserAgent("bpfmount"),
		remote.WithRetryBackoff(retryBackoff),
	}
}

// retryBackoff retries flaky registries briefly: the CSI caller retries
// the whole publish anyway.
var retryBackoff = remote.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}

// httpGuard refuses plain HTTP to hosts not allowed it. go-containerregistry
// falls back to HTTP on its own for private addresses; credentials must not
// go out in clear text there.
type httpGuard struct {
	inner   http.RoundTripper
	allow   func(host string) bool
	timeout func() time.Duration // of a request that is not a blob's
}

func (g *httpGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.allow(req.URL.Host) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("plain HTTP to %s is not allowed: the registry must serve TLS, or the node must list it as insecure", req.URL.Host)
	}
	if isBlobRequest(req) {
		// Blob reads are bounded by the size their descriptor declares and
		// by the pull's timeout.
		return g.inner.RoundTrip(req)
	}
	// Everything else (manifests, indexes, tag lists, tokens) is small and
	// quick; a registry that sends more, or drips it, is hostile or broken
	// and is cut off.
	ctx, cancel := context.WithTimeout(req.Context(), g.timeout())
	resp, err := g.inner.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		if req.Context().Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, &errSlow{url: req.URL.Redacted(), limit: g.timeout()}
		}
		return nil, err
	}
	if resp.ContentLength > maxManifestSize {
		resp.Body.Close()
		cancel()
		return nil, &errTooLarge{url: req.URL.Redacted(), limit: maxManifestSize}
	}
	resp.Body = &cappedBody{ReadCloser: resp.Body, left: maxManifestSize, url: req.URL.Redacted(),
		parent: req.Context(), ctx: ctx, cancel: cancel, timeout: g.timeout()}
	return resp, nil
}

// isBlobRequest reports whether req fetches a blob, directly or by a
// redirect from a blob URL (registries send blobs from a CDN).
func isBlobRequest(req *http.Request) bool {
	for hops := 0; req != nil && hops < 16; hops++ {
		if strings.Contains(req.URL.Path, "/blobs/") {
			return true
		}
		if req.Response == nil {
			return false
		}
		req = req.Response.Request
	}
	return false
}

// errSlow marks a registry response that did not arrive in time.
type errSlow struct {
	url   string
	limit time.Duration
}

func (e *errSlow) Error() string {
	return fmt.Sprintf("the registry did not answer %s within %v", e.url, e.limit)
}

// errTooLarge marks a registry response cut off at its size limit.
type errTooLarge struct {
	url   string
	limit int64
}

func (e *errTooLarge) Error() string {
	return fmt.Sprintf("the registry's response to %s is larger than %d bytes", e.url, e.limit)
}

// cappedBody fails with *errTooLarge past left bytes and with *errSlow
// once its own deadline passes.
type cappedBody struct {
	io.ReadCloser
	left    int64
	url     string
	parent  context.Context
	ctx     context.Context
	cancel  context.CancelFunc
	timeout time.Duration
}

func (b *cappedBody) Close() error {
	b.cancel()
	return b.ReadCloser.Close()
}

func (b *cappedBody) Read(p []byte) (n int, err error) {
	defer func() {
		if err != nil && err != io.EOF && b.parent.Err() == nil && errors.Is(b.ctx.Err(), context.DeadlineExceeded) {
			err = &errSlow{url: b.url, limit: b.timeout}
		}
	}()
	if b.left <= 0 {
		var one [1]byte
		if n, _ := b.ReadCloser.Read(one[:]); n > 0 {
			return 0, &errTooLarge{url: b.url, limit: maxManifestSize}
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err = b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// getManifest fetches a manifest or index within manifestTimeout and
// maxManifestSize.
func (r *Registry) getManifest(ctx context.Context, p *remote.Puller, ref name.Reference, refStr string) (*remote.Descriptor, error) {
	desc, err := p.Get(ctx, ref)
	if err == nil {
		return desc, nil
	}
	var big *errTooLarge
	var slow *errSlow
	switch {
	case errors.As(err, &big):
		return nil, fault.Errorf(fault.Invalid, "image %q: the registry sent a manifest larger than %d bytes, which no bytecode image has; it was cut off (the reference names something else, or the registry is broken)", refStr, maxManifestSize)
	case ctx.Err() == nil && errors.As(err, &slow):
		return nil, fault.Errorf(fault.Unavailable, "image %q: the registry did not send the manifest within %v: it is slow or broken; retry later", refStr, slow.limit)
	case strings.Contains(err.Error(), "does not match requested digest"):
		// go-containerregistry's check of a manifest fetched by digest; it
		// has no error type of its own.
		return nil, fault.Errorf(fault.Invalid, "image %q: the registry served a manifest that does not match the digest asked for: it serves corrupted or tampered content", refStr)
	}
	return nil, classify(ctx, refStr, "pulling", err)
}
