package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"
)

// Watcher keeps the current policy of a file and reloads it on change,
// without restart.
type Watcher struct {
	path     string
	interval time.Duration
	cur      atomic.Pointer[Policy]

	mu      sync.Mutex  // serializes polls
	last    fingerprint // last version seen, good or bad: a bad one is parsed and logged once
	readErr string      // last read error logged, so a missing file is logged once
}

// fingerprint identifies one version of the file. The content hash decides:
// mtime and size alone miss same-size edits within the mtime granularity.
type fingerprint struct {
	modTime time.Time
	size    int64
	sum     [sha256.Size]byte
}

// NewWatcher loads the policy at path once (an error if it is missing or
// invalid) and returns a Watcher that, once Run, checks it every interval.
func NewWatcher(path string, interval time.Duration) (*Watcher, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("policy watch interval must be positive, got %v", interval)
	}
	w := &Watcher{path: path, interval: interval}
	fp, data, err := w.read()
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	w.last = fp
	w.cur.Store(p)
	return w, nil
}

// Current returns the policy in force. It never returns nil.
func (w *Watcher) Current() *Policy { return w.cur.Load() }

// Run polls the file until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// read stats the path with os.Stat (following symlinks, so a ConfigMap's
// "..data" symlink swap shows up as a new mtime) and reads the content.
func (w *Watcher) read() (fingerprint, []byte, error) {
	st, err := os.Stat(w.path)
	if err != nil {
		return fingerprint{}, nil, err
	}
	if st.IsDir() {
		return fingerprint{}, nil, errors.New(w.path + " is a directory")
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		return fingerprint{}, nil, err
	}
	return fingerprint{modTime: st.ModTime(), size: st.Size(), sum: sha256.Sum256(data)}, data, nil
}

func (w *Watcher) poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	fp, data, err := w.read()
	if err != nil {
		// Missing for a moment (an editor's rename, a ConfigMap update) or
		// gone: either way keep enforcing what we have.
		if s := err.Error(); s != w.readErr {
			w.readErr = s
			klog.ErrorS(err, "Cannot read policy file; keeping the previous policy", "path", w.path)
		}
		return
	}
	w.readErr = ""
	if fp == w.last {
		return
	}
	sameContent := fp.sum == w.last.sum
	w.last = fp
	if sameContent {
		return // touched, or swapped to identical content
	}
	p, err := Parse(data)
	if err != nil {
		klog.ErrorS(err, "Policy file is invalid; keeping the previous policy", "path", w.path)
		return
	}
	w.cur.Store(p)
	klog.InfoS("Reloaded node policy", "path", w.path, "rules", len(p.rules), "localSection", p.local != nil)
}
