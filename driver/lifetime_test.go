package driver

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"

	"github.com/bpfmount/bpfmount/driver/policy"
	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
)

func (f *fakeLoader) Hold(key, owner string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held[key]) == 0 {
		return false
	}
	f.held[key][owner] = true
	return true
}

func (f *fakeLoader) holders(key string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.held[key]))
}

func (s *fakeStore) PutLinger(l *state.Linger) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lingers == nil {
		s.lingers = map[string]*state.Linger{}
	}
	c := *l
	s.lingers[l.Key] = &c
	return nil
}

func (s *fakeStore) GetLinger(key string) (*state.Linger, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lingers[key], nil
}

func (s *fakeStore) DeleteLinger(key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.lingers, key)
	return nil
}

func (s *fakeStore) Lingers() ([]*state.Linger, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.lingers)), nil
}

const keepPolicy = "keepAttached:\n  default: 0s\n  max: 1m\n"

func keepAttrs(keep string) map[string]string {
	a := localAttrs()
	a[AttrKeepAttached] = keep
	return a
}

func TestKeepAttachedBadInput(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	for _, c := range []struct{ keep, want string }{
		{"-1s", `"keepAttached": "-1s" is not a duration`},
		{"soon", `"keepAttached": "soon" is not a duration`},
		{"30", `"keepAttached": "30" is not a duration`},
		{"2m", `"keepAttached": 2m0s is over this node's cap of 1m0s`},
	} {
		_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, keepAttrs(c.keep)))
		wantCode(t, err, codes.InvalidArgument, c.want)
		f.assertNothingLeft(t)
	}
	// With no keepAttached section the cap is 0: nothing may linger.
	f = newTestDriver(t, nil)
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, keepAttrs("1s")))
	wantCode(t, err, codes.InvalidArgument, "over this node's cap of 0s")
	f.assertNothingLeft(t)
}

func TestKeepAttachedLingersAndIsTakenOver(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	ctx := context.Background()
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, keepAttrs("30s"))); err != nil {
		t.Fatal(err)
	}
	rec, _ := f.store.Get("vol-1")
	if rec.KeepAttached != 30*time.Second {
		t.Fatalf("record keepAttached = %s", rec.KeepAttached)
	}
	key := rec.Key
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget)); err != nil {
		t.Fatal(err)
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{lingerOwner(key)}) {
		t.Fatalf("after the last unpublish the program is held by %v, want the linger hold alone", got)
	}
	l, _ := f.store.GetLinger(key)
	if l == nil || time.Until(l.Deadline) < 25*time.Second || time.Until(l.Deadline) > 31*time.Second {
		t.Fatalf("linger record %+v, want a deadline 30s ahead", l)
	}
	// Before the deadline a collection keeps it.
	if got := f.d.expireLingers(time.Now()); len(got) != 0 {
		t.Fatalf("expired %v before the deadline", got)
	}
	// A publish of the identical request takes it over.
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget, keepAttrs("30s"))); err != nil {
		t.Fatal(err)
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-2"}) {
		t.Fatalf("after the take-over the program is held by %v, want vol-2 alone", got)
	}
	if l, _ := f.store.GetLinger(key); l != nil {
		t.Fatalf("linger record left after the take-over: %+v", l)
	}
	// Gone again, and past the deadline: detached.
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-2", testTarget)); err != nil {
		t.Fatal(err)
	}
	if got := f.d.expireLingers(time.Now().Add(31 * time.Second)); !slices.Equal(got, []string{key}) {
		t.Fatalf("expired %v, want %s", got, key)
	}
	if got := f.loader.holders(key); len(got) != 0 {
		t.Fatalf("program still held by %v after its deadline", got)
	}
	f.assertNothingLeft(t)
	if len(f.store.lingers) != 0 {
		t.Fatalf("linger records left: %v", f.store.lingers)
	}
}

// A rollout whose new pod publishes before the old pod's unpublish: the
// old volume's going leaves no linger record while the new one holds the
// program; the new one lingers when it goes.
func TestKeepAttachedNoLingerWhileHeld(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	ctx := context.Background()
	for _, v := range []string{"vol-1", "vol-2"} {
		if _, err := f.d.NodePublishVolume(ctx, publishReq(v, testTarget+v, keepAttrs("30s"))); err != nil {
			t.Fatal(err)
		}
	}
	key := f.store.records["vol-1"].Key
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget+"vol-1")); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.store.GetLinger(key); l != nil {
		t.Fatalf("linger record %+v while vol-2 holds the program", l)
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-2"}) {
		t.Fatalf("held by %v, want vol-2 alone", got)
	}
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-2", testTarget+"vol-2")); err != nil {
		t.Fatal(err)
	}
	if l, _ := f.store.GetLinger(key); l == nil {
		t.Fatal("the last volume's going left no linger record")
	}
}

func TestKeepAttachedCapLoweredLater(t *testing.T) {
	// The record says 30s, the policy in force at unpublish says 0: the
	// program goes with its volume.
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	ctx := context.Background()
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, keepAttrs("30s"))); err != nil {
		t.Fatal(err)
	}
	f.d.opts.Policy = policy.Static(mustPolicy(t, "rules: []\n"))
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget)); err != nil {
		t.Fatal(err)
	}
	f.assertNothingLeft(t)
	if len(f.store.lingers) != 0 {
		t.Fatalf("linger records left: %v", f.store.lingers)
	}
}

func TestKeepAttachedDefaultFromPolicy(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, "keepAttached:\n  default: 10s\n  max: 1m\n"))
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, localAttrs())); err != nil {
		t.Fatal(err)
	}
	if rec, _ := f.store.Get("vol-1"); rec.KeepAttached != 10*time.Second {
		t.Fatalf("record keepAttached = %s, want the policy's default 10s", rec.KeepAttached)
	}
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-2", testTarget+"2", keepAttrs("0s"))); err != nil {
		t.Fatal(err)
	}
	if rec, _ := f.store.Get("vol-2"); rec.KeepAttached != 0 {
		t.Fatalf("record keepAttached = %s, want 0 as asked", rec.KeepAttached)
	}
}

func namedAttrs(name string, kv ...string) map[string]string {
	a := localAttrs()
	a[AttrName] = name
	for i := 0; i < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return a
}

func TestNameBadInput(t *testing.T) {
	f := newTestDriver(t, nil)
	for _, n := range []string{"", "Fw", "-fw", "fw-", "fw_1", "fw.edge", strings.Repeat("a", 64), "../x"} {
		_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, namedAttrs(n)))
		wantCode(t, err, codes.InvalidArgument, `volume attribute "name"`)
		f.assertNothingLeft(t)
	}
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, namedAttrs(strings.Repeat("a", 63)))); err != nil {
		t.Fatalf("a 63-character name: %v", err)
	}
}

func TestNamePolicy(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: fw
  namespaces: ["net-fw"]
  images: ["registry.example/bpf/*"]
  names: ["fw-*"]
`))
	a := podAttrs("net-fw")
	a[AttrName] = "counter"
	_, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, a))
	wantCode(t, err, codes.PermissionDenied, `rule "fw" allows names ["fw-*"] only, not "counter"`)
	f.assertNothingLeft(t)
	if f.loader.resolves != 0 {
		t.Fatalf("a denied name was resolved %d times", f.loader.resolves)
	}
	a[AttrName] = "fw-edge"
	if _, err := f.d.NodePublishVolume(context.Background(), publishReq("vol-1", testTarget, a)); err != nil {
		t.Fatal(err)
	}
}

func TestNameHeldByAnotherProgram(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	ctx := context.Background()
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, namedAttrs("fw", AttrKeepAttached, "30s"))); err != nil {
		t.Fatal(err)
	}
	// The identical request under the name shares.
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", namedAttrs("fw", AttrKeepAttached, "30s"))); err != nil {
		t.Fatal(err)
	}
	key := f.store.records["vol-1"].Key
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-1", "vol-2"}) {
		t.Fatalf("holders %v, want both volumes", got)
	}
	// Another interface under the name: refused, naming the holder.
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-3", testTarget+"3", namedAttrs("fw", AttrInterface, "eth1")))
	wantCode(t, err, codes.FailedPrecondition, `name "fw" already holds xdp program "prog" on eth0 with priority 1000 (program id 7, held by volume vol-`)
	// While it lingers the name stays held.
	for _, v := range []string{"vol-1", "vol-2"} {
		tgt := f.store.records[v].TargetPath
		if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq(v, tgt)); err != nil {
			t.Fatal(err)
		}
	}
	_, err = f.d.NodePublishVolume(ctx, publishReq("vol-3", testTarget+"3", namedAttrs("fw", AttrInterface, "eth1")))
	wantCode(t, err, codes.FailedPrecondition, "held by a program kept attached until")
	// Once it is gone, the name is free.
	f.d.expireLingers(time.Now().Add(time.Minute))
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-3", testTarget+"3", namedAttrs("fw", AttrInterface, "eth1"))); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeLoader) Program(key string) *loader.Program {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.held[key]) == 0 {
		return nil
	}
	return &loader.Program{Key: key, ID: 7, Maps: map[string]*ebpf.Map{"counts": nil, "events": nil}}
}

func fromAttrs(name string, kv ...string) map[string]string {
	a := map[string]string{AttrFrom: name}
	for i := 0; i < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return a
}

func TestFromBadInput(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	for _, c := range []struct {
		attrs map[string]string
		want  string
	}{
		{fromAttrs("fw", AttrImage, "registry.example/bpf/counter:v1"), `"image" cannot be used with "from": a volume either loads or reads`},
		{fromAttrs("fw", AttrInterface, "eth0"), `"interface" cannot be used with "from"`},
		{fromAttrs("fw", AttrKeepAttached, "1s"), `"keepAttached" cannot be used with "from"`},
		{fromAttrs("fw", AttrName, "fw"), `"name" cannot be used with "from"`},
		{fromAttrs("Fw"), `"from": "Fw" is not a DNS label`},
		{fromAttrs("fw", AttrMaps, "a-b"), `"a-b" is not a map name`},
	} {
		_, err := f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, c.attrs))
		wantCode(t, err, codes.InvalidArgument, c.want)
		f.assertNothingLeft(t)
	}
}

func TestFromMountsNamedProgramsMaps(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, fromAttrs("fw")))
	wantCode(t, err, codes.Unavailable, `no program is loaded under name "fw" on this node`)
	f.assertNothingLeft(t)

	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget+"1", namedAttrs("fw"))); err != nil {
		t.Fatal(err)
	}
	_, err = f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, fromAttrs("fw", AttrMaps, "nope")))
	wantCode(t, err, codes.InvalidArgument, `map "nope" is not a map of the program named "fw" (it has: counts, events)`)
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, fromAttrs("fw", AttrMaps, "counts"))); err != nil {
		t.Fatal(err)
	}
	rec, _ := f.store.Get("vol-r")
	key := f.store.records["vol-1"].Key
	if rec.Key != "" || !slices.Equal(rec.Maps, []string{"counts"}) || rec.ProgramID != 7 {
		t.Fatalf("map-only record %+v", rec)
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-1"}) {
		t.Fatalf("program held by %v, want its load volume alone", got)
	}
	// The publish is idempotent, and the load volume's unpublish detaches
	// the program although a reader is mounted.
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, fromAttrs("fw", AttrMaps, "counts"))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-1", testTarget+"1")); err != nil {
		t.Fatal(err)
	}
	if n := f.loader.owners(); n != 0 {
		t.Fatalf("%d owners after the last load volume went", n)
	}
	if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq("vol-r", testTarget)); err != nil {
		t.Fatal(err)
	}
	f.assertNothingLeft(t)
}

func TestFromPolicy(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, `rules:
- name: monitoring
  namespaces: ["mon"]
  names: ["fw-*"]
`))
	ctx := context.Background()
	a := podAttrs("mon")
	for k := range localAttrs() {
		delete(a, k)
	}
	a[AttrFrom] = "counter"
	req := publishReq("vol-r", testTarget, a)
	req.Readonly = true
	_, err := f.d.NodePublishVolume(ctx, req)
	wantCode(t, err, codes.PermissionDenied, `rule "monitoring" allows names ["fw-*"] only, not "counter"`)
	a[AttrFrom] = "fw-edge"
	req.Readonly = false
	_, err = f.d.NodePublishVolume(ctx, req)
	wantCode(t, err, codes.PermissionDenied, "allows read-only map-only volumes only")
	req.Readonly = true
	_, err = f.d.NodePublishVolume(ctx, req)
	wantCode(t, err, codes.Unavailable, `no program is loaded under name "fw-edge"`)
	f.assertNothingLeft(t)
}

func (s *fakeStore) PutNodeProgram(p *state.NodeProgram) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodeProgs == nil {
		s.nodeProgs = map[string]*state.NodeProgram{}
	}
	c := *p
	s.nodeProgs[p.Name] = &c
	return nil
}

func (s *fakeStore) DeleteNodeProgram(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodeProgs, name)
	return nil
}

func (s *fakeStore) NodePrograms() ([]*state.NodeProgram, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.SortedFunc(maps.Values(s.nodeProgs), func(a, b *state.NodeProgram) int { return strings.Compare(a.Name, b.Name) }), nil
}

const programsHead = "apiVersion: bpfmount.io/v1alpha1\nkind: NodePrograms\n"

func TestParseProgramsErrors(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"apiVersion: v1\nkind: NodePrograms\n", "want apiVersion: bpfmount.io/v1alpha1"},
		{programsHead + "programs:\n- name: Fw\n  attributes: {image: r/x:v1, interface: eth0}\n", `name "Fw" is not a DNS label`},
		{programsHead + "programs:\n- name: fw\n  attributes: {image: r/x:v1, interface: eth0}\n- name: fw\n  attributes: {image: r/x:v1, interface: eth1}\n", `name "fw" is listed twice`},
		{programsHead + "programs:\n- name: fw\n  attributes: {image: r/x:v1, interface: eth0, keepAttached: 1s}\n", `attribute "keepAttached" does not apply`},
		{programsHead + "programs:\n- name: fw\n  attributes: {from: other}\n", `attribute "from" does not apply`},
		{programsHead + "programs:\n- name: fw\n  attributes: {image: r/x:v1}\n", `volume attribute "interface" is required`},
		{programsHead + "programs:\n- name: fw\n  attributes: {image: r/x:v1, interface: eth0, csi.storage.k8s.io/pod.namespace: x}\n", "kubelet keys"},
		{programsHead + "programz: []\n", "unknown field"},
	} {
		if _, err := parsePrograms([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to say %q", c.doc, err, c.want)
		}
	}
}

func TestSyncPrograms(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	want, err := parsePrograms([]byte(programsHead + `programs:
- name: fw
  attributes: {image: registry.example/bpf/fw:v1, interface: eth0}
- name: counter
  attributes: {image: registry.example/bpf/counter:v1, interface: eth1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.d.syncPrograms(ctx, want); err != nil {
		t.Fatal(err)
	}
	if n := f.loader.owners(); n != 2 || len(f.store.nodeProgs) != 2 {
		t.Fatalf("%d owners and records %v after loading two node programs", n, f.store.nodeProgs)
	}
	fwKey := f.store.nodeProgs["fw"].Key
	// A pod reads a node program's maps.
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-r", testTarget, fromAttrs("fw"))); err != nil {
		t.Fatal(err)
	}
	// A pod's load under the name with other attributes is refused.
	_, err = f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget+"1", namedAttrs("fw")))
	wantCode(t, err, codes.FailedPrecondition, "held by the node (programs file)")
	// Syncing again changes nothing.
	if err := f.d.syncPrograms(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := f.loader.holders(fwKey); !slices.Equal(got, []string{"node:fw"}) {
		t.Fatalf("fw held by %v", got)
	}
	// counter removed, fw moved to eth2: counter unloaded, fw reloaded.
	want, _ = parsePrograms([]byte(programsHead + "programs:\n- name: fw\n  attributes: {image: registry.example/bpf/fw:v1, interface: eth2}\n"))
	if err := f.d.syncPrograms(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := f.loader.holders(fwKey); len(got) != 0 {
		t.Fatalf("old fw still held by %v", got)
	}
	if len(f.store.nodeProgs) != 1 || f.store.nodeProgs["fw"].Identity.Interface != "eth2" || f.loader.owners() != 1 {
		t.Fatalf("records %v, %d owners after the change", f.store.nodeProgs, f.loader.owners())
	}
	if err := f.d.syncPrograms(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if len(f.store.nodeProgs) != 0 || f.loader.owners() != 0 {
		t.Fatalf("records %v, %d owners after emptying the file", f.store.nodeProgs, f.loader.owners())
	}
}

// Replace moves the owners of oldKey to r's key, as the loader does.
func (f *fakeLoader) Replace(_ context.Context, oldKey string, r *loader.Resolved, owner string) (*loader.Program, *loader.Replaced, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := r.Identity.Key()
	rep := &loader.Replaced{Carried: []string{"counts"}, Reset: []string{"events"}}
	f.held[key] = map[string]bool{owner: true}
	for o := range f.held[oldKey] {
		f.held[key][o] = true
		rep.Owners = append(rep.Owners, o)
	}
	delete(f.held, oldKey)
	return &loader.Program{Identity: r.Identity, Key: key, ID: 8, Maps: map[string]*ebpf.Map{"counts": nil, "events": nil}}, rep, nil
}

func (f *fakeLoader) RecoverReplace(from, to loader.Identity) (bool, error) { return false, nil }

func (s *fakeStore) PutUpgrade(u *state.Upgrade) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.upgrades == nil {
		s.upgrades = map[string]*state.Upgrade{}
	}
	s.upgrades[u.To.Key()] = u
	return nil
}

func (s *fakeStore) DeleteUpgrade(key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.upgrades, key)
	return nil
}

func (s *fakeStore) Upgrades() ([]*state.Upgrade, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.upgrades)), nil
}

func TestUpgradeInPlace(t *testing.T) {
	f := newTestDriver(t, mustPolicy(t, keepPolicy))
	ev := &fakeEvents{}
	f.d.opts.Events = ev
	ctx := context.Background()
	v1 := namedAttrs("fw", AttrKeepAttached, "30s")
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget+"1", v1)); err != nil {
		t.Fatal(err)
	}
	old := f.store.records["vol-1"].Key
	v2 := namedAttrs("fw", AttrImage, "registry.example/bpf/counter:v2", AttrKeepAttached, "30s")
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", v2)); err != nil {
		t.Fatal(err)
	}
	key := f.store.records["vol-2"].Key
	if key == old {
		t.Fatal("v2 has v1's key")
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-1", "vol-2"}) {
		t.Fatalf("after the upgrade the program is held by %v, want both versions' volumes", got)
	}
	if r := f.store.records["vol-1"]; r.Key != key || r.ProgramID != 8 || r.Identity.Digest != "sha256:registry.example/bpf/counter:v2" {
		t.Fatalf("the old volume's record did not follow the upgrade: %+v", r)
	}
	if r := f.store.records["vol-2"]; !slices.Equal(r.ResetMaps, []string{"events"}) {
		t.Fatalf("the upgrading volume's record says reset maps %v", r.ResetMaps)
	}
	if len(f.store.upgrades) != 0 {
		t.Fatalf("upgrade records left: %v", f.store.upgrades)
	}
	if msg := ev.last(); !strings.Contains(msg, "upgraded xdp program") || !strings.Contains(msg, "start empty: events") {
		t.Fatalf("event %q does not tell the upgrade and its reset maps", msg)
	}
	// Both versions gone: it lingers under v2, and a v3 upgrades the
	// lingering program, taking it over.
	for _, v := range []string{"vol-1", "vol-2"} {
		if _, err := f.d.NodeUnpublishVolume(ctx, unpublishReq(v, f.store.records[v].TargetPath)); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{lingerOwner(key)}) {
		t.Fatalf("lingering program held by %v", got)
	}
	v3 := namedAttrs("fw", AttrImage, "registry.example/bpf/counter:v3")
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-3", testTarget+"3", v3)); err != nil {
		t.Fatal(err)
	}
	k3 := f.store.records["vol-3"].Key
	if got := f.loader.holders(k3); !slices.Equal(got, []string{"vol-3"}) {
		t.Fatalf("after upgrading the lingering program it is held by %v, want vol-3 alone", got)
	}
	if len(f.store.lingers) != 0 || len(f.store.upgrades) != 0 {
		t.Fatalf("linger %v or upgrade %v records left", f.store.lingers, f.store.upgrades)
	}
	// Another interface under the name is still refused.
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-4", testTarget+"4", namedAttrs("fw", AttrInterface, "eth1")))
	wantCode(t, err, codes.FailedPrecondition, `name "fw" already holds`)
}

func (e *fakeEvents) last() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.got) == 0 {
		return ""
	}
	return e.got[len(e.got)-1].detail
}

// A node program under a name pods hold with another version is refused,
// saying so; the pods' program stays.
func TestNodeProgramDoesNotUpgradePods(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget, namedAttrs("fw"))); err != nil {
		t.Fatal(err)
	}
	key := f.store.records["vol-1"].Key
	want, err := parsePrograms([]byte(programsHead + "programs:\n- name: fw\n  attributes: {image: registry.example/bpf/counter:v2, interface: eth0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = f.d.syncPrograms(ctx, want)
	if err == nil || !strings.Contains(err.Error(), "a node program does not replace a pod's") {
		t.Fatalf("sync error %v", err)
	}
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-1"}) || len(f.store.nodeProgs) != 0 {
		t.Fatalf("pods' program held by %v, node records %v", got, f.store.nodeProgs)
	}
}

// A program that volumes share without the name is not the name's to
// upgrade.
func TestUpgradeRefusedWhenSharedWithoutName(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-plain", testTarget, localAttrs())); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.NodePublishVolume(ctx, publishReq("vol-1", testTarget+"1", namedAttrs("fw"))); err != nil {
		t.Fatal(err)
	}
	key := f.store.records["vol-1"].Key
	_, err := f.d.NodePublishVolume(ctx, publishReq("vol-2", testTarget+"2", namedAttrs("fw", AttrImage, "registry.example/bpf/counter:v2")))
	wantCode(t, err, codes.FailedPrecondition, `volume vol-plain shares it without that name`)
	if got := f.loader.holders(key); !slices.Equal(got, []string{"vol-1", "vol-plain"}) {
		t.Fatalf("program held by %v after the refused upgrade", got)
	}
	if len(f.store.upgrades) != 0 || f.store.records["vol-2"] != nil {
		t.Fatalf("a refused upgrade left records: %v %v", f.store.upgrades, f.store.records["vol-2"])
	}
}

// A node program on interface node:default attaches to the default
// route's interface, found at each load; a node program's cgroup is
// checked as a local volume's.
func TestSyncProgramsNodeDefaultAndCgroup(t *testing.T) {
	f := newTestDriver(t, nil)
	ctx := context.Background()
	f.d.defaultRoute = func() (string, error) { return "ens5", nil }
	want, err := parsePrograms([]byte(programsHead + `programs:
- name: fw
  attributes: {image: registry.example/bpf/fw:v1, interface: "node:default"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.d.syncPrograms(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := f.store.nodeProgs["fw"].Identity.Interface; got != "ens5" {
		t.Fatalf("node program attached to %q, want the default route's ens5", got)
	}
	if want["fw"].load.Interface != NodeDefault {
		t.Fatal("the parsed request was changed: the next load would not look up the route again")
	}
	want, err = parsePrograms([]byte(programsHead + `programs:
- name: skb
  attributes: {image: registry.example/bpf/skb:v1, type: cgroup_skb, direction: egress, cgroup: /nonexistent/bpfmount-test}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.d.syncPrograms(ctx, want); err == nil || f.store.nodeProgs["skb"] != nil {
		t.Fatalf("a node program on a missing cgroup: %v, records %v", err, f.store.nodeProgs)
	}
}
