package driver

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/bpfmount/bpfmount/driver/state"
	"github.com/bpfmount/bpfmount/loader"
	"github.com/bpfmount/bpfmount/loader/bytecode"
)

// Volume attribute keys, documented in README.md ("Volume attributes").
const (
	AttrImage      = "image"
	AttrProgram    = "program"
	AttrType       = "type"
	AttrInterface  = "interface"
	AttrAttachTo   = "attachTo" // tracing types: the target; cgroup_sock_addr: the socket operation
	AttrPriority   = "priority"
	AttrProceedOn  = "proceedOn"
	AttrDirection  = "direction"
	AttrXDPMode    = "xdpMode"
	AttrMaps       = "maps"
	AttrGlobals    = "globals"
	AttrPullPolicy = "pullPolicy"
	AttrCgroup     = "cgroup" // cgroup types of local requests: the cgroup2 directory
	// Lifetimes (lifetime.go).
	AttrKeepAttached = "keepAttached"
	AttrName         = "name"
	AttrFrom         = "from"
)

// Keys kubelet adds with podInfoOnMount and for ephemeral volumes.
const (
	kubeletPrefix       = "csi.storage.k8s.io/"
	keyPodName          = kubeletPrefix + "pod.name"
	keyPodNamespace     = kubeletPrefix + "pod.namespace"
	keyPodUID           = kubeletPrefix + "pod.uid"
	keyServiceAccount   = kubeletPrefix + "serviceAccount.name"
	keyServiceAccountTk = kubeletPrefix + "serviceAccount.tokens" // secret: never stored or logged
)

var attrKeys = []string{
	AttrAttachTo, AttrDirection, AttrGlobals, AttrImage, AttrInterface, AttrMaps, AttrPriority,
	AttrProceedOn, AttrProgram, AttrPullPolicy, AttrType, AttrXDPMode, AttrCgroup, AttrContainer,
	AttrKeepAttached, AttrName, AttrFrom,
}

// Bounds on attribute values: generous for real use, small enough that a
// hostile request cannot make the driver hold or log much.
const (
	maxValueLen  = 4096
	maxImageLen  = 1024
	maxGlobalLen = 4096 // bytes of one global's value
	maxListLen   = 64   // entries in a comma list

	// The whole volume context: kubelet adds five keys of its own, so 64
	// leaves room for every attribute and more; 16 KiB holds them all at
	// realistic sizes. The service account tokens are bounded apart: they
	// are never stored or logged, and their size grows with audiences.
	maxAttrs      = 64
	maxAttrsBytes = 16 << 10
	maxTokensLen  = 64 << 10
)

var (
	priorityRE = regexp.MustCompile(`^[0-9]{1,4}$`)
	hexRE      = regexp.MustCompile(`^[0-9A-Fa-f]+$`)
)

// volumeRequest is a validated publish request.
type volumeRequest struct {
	load  loader.Request
	maps  []string // nil: every map
	attrs map[string]string
	pod   state.Pod
	// fromPod is true when the request carries any kubelet key: it is
	// then a pod's request, decided by the policy's rules; only requests
	// with none are local (the standalone CLI).
	fromPod bool
	// podCgroup is true when the program attaches to the pod's own cgroup,
	// found at publish (see cgroup.go).
	podCgroup bool
	life      lifetime // keepAttached, name, from (lifetime.go)
}

// parseAttributes checks every volume attribute and turns them into a load
// request. It touches nothing outside the process.
func parseAttributes(ctx map[string]string) (*volumeRequest, error) {
	if err := checkSize(ctx); err != nil {
		return nil, err
	}
	vr := &volumeRequest{attrs: map[string]string{}}
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := ctx[k]
		if strings.HasPrefix(k, kubeletPrefix) {
			vr.fromPod = true
			if k == keyServiceAccountTk {
				continue
			}
			if err := checkKubeletKey(k); err != nil {
				return nil, err
			}
			if err := checkText(k, v, maxValueLen); err != nil {
				return nil, err
			}
			vr.attrs[k] = v
			continue
		}
		if !slices.Contains(attrKeys, k) {
			return nil, unknownKey(k)
		}
		limit := maxValueLen
		if k == AttrImage {
			limit = maxImageLen
		}
		if err := checkText(k, v, limit); err != nil {
			return nil, err
		}
		vr.attrs[k] = v
	}
	vr.pod = state.Pod{
		Name: ctx[keyPodName], Namespace: ctx[keyPodNamespace],
		UID: ctx[keyPodUID], ServiceAccount: ctx[keyServiceAccount],
	}
	if vr.fromPod && vr.pod.Namespace == "" {
		// Half a pod's request must not pass as a local one, which the
		// policy treats far more leniently.
		return nil, invalid("the volume context holds kubelet keys (%s*) but no %q: a pod's request must name its namespace (is podInfoOnMount set on the CSIDriver?)", kubeletPrefix, keyPodNamespace)
	}
	if err := vr.parseLifetime(); err != nil {
		return nil, err
	}
	if vr.life.from != "" {
		return vr, nil // a map-only volume, checked by parseLifetime
	}
	if err := vr.parse(); err != nil {
		return nil, err
	}
	if err := vr.checkPodScopedLifetime(); err != nil {
		return nil, err
	}
	return vr, nil
}

// checkSize bounds the volume context as a whole, before any key is looked
// at, so that no amount of extra keys makes the driver store or log much.
func checkSize(ctx map[string]string) error {
	if len(ctx) > maxAttrs {
		return invalid("the volume context has %d keys, more than the %d allowed: remove the unused ones", len(ctx), maxAttrs)
	}
	total := 0
	for k, v := range ctx {
		if k == keyServiceAccountTk {
			if len(v) > maxTokensLen {
				return invalid("volume attribute %q is %d bytes long, more than the %d allowed", keyServiceAccountTk, len(v), maxTokensLen)
			}
			continue
		}
		total += len(k) + len(v)
	}
	if total > maxAttrsBytes {
		return invalid("the volume context holds %d bytes of keys and values, more than the %d allowed", total, maxAttrsBytes)
	}
	return nil
}

func (vr *volumeRequest) parse() error {
	a := vr.attrs
	lr := &vr.load

	img, ok := a[AttrImage]
	if !ok || img == "" {
		return invalid("volume attribute %q is required: the bytecode image to load, e.g. registry.example/bpf/xdp-counter:v1 or oci:/path/to/layout:tag", AttrImage)
	}
	if bytecode.IsLayout(img) {
		if _, _, err := bytecode.SplitLayoutRef(img); err != nil {
			return invalid("volume attribute %q: %v", AttrImage, err)
		}
	} else if strings.ContainsAny(img, " \t") {
		return invalid("volume attribute %q: %q is not an image reference", AttrImage, img)
	}
	lr.Image.Reference = img
	switch p := a[AttrPullPolicy]; p {
	case "":
		lr.Image.Policy = bytecode.PullIfNotPresent
	case string(bytecode.PullAlways), string(bytecode.PullIfNotPresent), string(bytecode.PullNever):
		lr.Image.Policy = bytecode.PullPolicy(p)
	default:
		return invalid("volume attribute %q: %q is not a pull policy (valid: Always, IfNotPresent, Never)", AttrPullPolicy, p)
	}

	if p, ok := a[AttrProgram]; ok {
		if !bytecode.IsIdentifier(p) {
			return invalid("volume attribute %q: %q is not a program (function) name: use letters, digits and _", AttrProgram, p)
		}
		lr.Program = p
	}
	if t, ok := a[AttrType]; ok {
		if !slices.Contains(loader.Hooks, loader.Hook(t)) {
			return invalid("volume attribute %q: %q is not a supported type (valid: %s)", AttrType, t, hookNames(loader.Hooks))
		}
		lr.Hook = loader.Hook(t)
	}
	if err := vr.parseTarget(); err != nil {
		return err
	}
	if err := vr.parseContainer(); err != nil {
		return err
	}

	if p, ok := a[AttrPriority]; ok {
		if !priorityRE.MatchString(p) {
			return invalid("volume attribute %q: %q is not a number from 1 to 1000", AttrPriority, p)
		}
		var n int
		fmt.Sscan(p, &n)
		if n < 1 || n > 1000 {
			return invalid("volume attribute %q: %d is out of range (1 to 1000; lower runs first)", AttrPriority, n)
		}
		lr.Priority = n
	}

	if d, ok := a[AttrDirection]; ok {
		if d != loader.Ingress && d != loader.Egress {
			return invalid("volume attribute %q: %q is not a direction (valid: ingress, egress)", AttrDirection, d)
		}
		lr.Direction = d
	}
	if m, ok := a[AttrXDPMode]; ok {
		if m != loader.XDPModeAuto && m != loader.XDPModeNative && m != loader.XDPModeSKB {
			return invalid("volume attribute %q: %q is not an XDP mode (valid: auto, native, skb)", AttrXDPMode, m)
		}
		lr.XDPMode = m
	}
	if p, ok := a[AttrProceedOn]; ok {
		list, err := splitList(AttrProceedOn, p)
		if err != nil {
			return err
		}
		for _, act := range list {
			_, x := loader.XDPActions[act]
			_, t := loader.TCActions[act]
			if !x && !t {
				return invalid("volume attribute %q: %q is not an action (xdp: %s; tc: %s)", AttrProceedOn, act,
					strings.Join(loader.ActionNames(loader.HookXDP), ", "), strings.Join(loader.ActionNames(loader.HookTC), ", "))
			}
		}
		lr.ProceedOn = list
	}
	if m, ok := a[AttrMaps]; ok {
		list, err := parseMaps(m)
		if err != nil {
			return err
		}
		vr.maps = list
	}
	if g, ok := a[AttrGlobals]; ok {
		globals, err := parseGlobals(g)
		if err != nil {
			return err
		}
		lr.Globals = globals
	}
	return checkHookKeys(lr, a)
}

// checkHookKeys rejects keys that do not apply to the requested type. When
// the type comes from the image, the loader checks the same after fetching.
func checkHookKeys(lr *loader.Request, a map[string]string) error {
	if loader.IsTracing(lr.Hook) {
		for _, k := range []string{AttrInterface, AttrPriority, AttrProceedOn, AttrDirection, AttrXDPMode} {
			if _, ok := a[k]; ok {
				return invalid("volume attribute %q does not apply to type %s (the kernel runs any number of programs on one tracing hook): remove it", k, lr.Hook)
			}
		}
		if _, err := loader.ParseAttachTo(lr.Hook, lr.AttachTo); err != nil {
			return err // names the attribute, with an Invalid kind
		}
		return nil
	}
	if lr.Hook != "" && lr.AttachTo != "" && lr.Hook != loader.HookCgroupSockAddr {
		return invalid("volume attribute %q applies to tracing types (%s) and cgroup_sock_addr, not %s: remove it", AttrAttachTo, hookNames(loader.TracingHooks), lr.Hook)
	}
	switch lr.Hook {
	case loader.HookXDP:
		if lr.Direction != "" {
			return invalid("volume attribute %q applies to tc and tcx, not xdp: remove it", AttrDirection)
		}
	case loader.HookTC, loader.HookTCX:
		if lr.Direction == "" {
			return invalid("volume attribute %q is required for type %s (valid: ingress, egress)", AttrDirection, lr.Hook)
		}
		if lr.XDPMode != "" {
			return invalid("volume attribute %q applies to xdp, not %s: remove it", AttrXDPMode, lr.Hook)
		}
	}
	if loader.IsCgroupHook(lr.Hook) {
		return checkCgroupHookKeys(lr)
	}
	if lr.Hook != "" && len(lr.ProceedOn) > 0 {
		if lr.Hook == loader.HookTCX {
			return invalid("volume attribute %q applies to xdp and tc; tcx programs chain by returning TCX_NEXT: remove it", AttrProceedOn)
		}
		table := loader.XDPActions
		if lr.Hook == loader.HookTC {
			table = loader.TCActions
		}
		for _, act := range lr.ProceedOn {
			if _, ok := table[act]; !ok {
				return invalid("volume attribute %q: %q is not a %s action (valid: %s)", AttrProceedOn, act, lr.Hook, strings.Join(loader.ActionNames(lr.Hook), ", "))
			}
		}
	}
	return nil
}

func hookNames(hs []loader.Hook) string {
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = string(h)
	}
	return strings.Join(s, ", ")
}

func parseGlobals(s string) (map[string][]byte, error) {
	list, err := splitList(AttrGlobals, s)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, item := range list {
		name, val, ok := strings.Cut(item, "=")
		if !ok {
			return nil, invalid("volume attribute %q: %q is not NAME=HEX", AttrGlobals, item)
		}
		if !bytecode.IsIdentifier(name) {
			return nil, invalid("volume attribute %q: %q is not a variable name", AttrGlobals, name)
		}
		if _, dup := out[name]; dup {
			return nil, invalid("volume attribute %q: %q is set twice", AttrGlobals, name)
		}
		if val == "" || len(val)%2 != 0 || !hexRE.MatchString(val) || len(val) > 2*maxGlobalLen {
			return nil, invalid("volume attribute %q: the value of %q must be an even number of hex digits (the variable's bytes in the node's byte order, at most %d bytes), like %s=2a000000", AttrGlobals, name, maxGlobalLen, name)
		}
		b, _ := hex.DecodeString(val)
		out[name] = b
	}
	return out, nil
}

// parseMaps parses the maps attribute: a list of map names.
func parseMaps(s string) ([]string, error) {
	list, err := splitList(AttrMaps, s)
	if err != nil {
		return nil, err
	}
	for _, name := range list {
		if !bytecode.IsIdentifier(name) {
			return nil, invalid("volume attribute %q: %q is not a map name: use letters, digits and _", AttrMaps, name)
		}
	}
	return list, nil
}

func splitList(key, s string) ([]string, error) {
	parts := strings.Split(s, ",")
	if len(parts) > maxListLen {
		return nil, invalid("volume attribute %q lists %d entries, more than %d", key, len(parts), maxListLen)
	}
	var out []string
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, invalid("volume attribute %q has an empty entry in %q: use a comma-separated list", key, s)
		}
		if slices.Contains(out, p) {
			return nil, invalid("volume attribute %q lists %q twice", key, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// checkIfname follows the kernel's dev_valid_name, restricted to printable
// ASCII so that look-alike names cannot pass.
func checkIfname(s string) error {
	bad := len(s) > 15 || s == "." || s == ".."
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '/' || r == ':' {
			bad = true
		}
	}
	if bad {
		return invalid("volume attribute %q: %q is not an interface name (1 to 15 printable ASCII characters, no '/', ':' or spaces)", AttrInterface, s)
	}
	return nil
}

// checkText rejects values that are too long, not UTF-8, or hold control
// characters; keys the driver acts on must also be ASCII.
func checkText(key, v string, limit int) error {
	if len(v) > limit {
		return invalid("volume attribute %q is %d bytes long, more than the %d allowed", key, len(v), limit)
	}
	if !utf8.ValidString(v) {
		return invalid("volume attribute %q is not valid UTF-8", key)
	}
	ascii := !strings.HasPrefix(key, kubeletPrefix)
	for _, r := range v {
		if r < ' ' || r == 0x7f || (ascii && r > '~') {
			return invalid("volume attribute %q holds a control or non-ASCII character (%U); only printable ASCII is accepted", key, r)
		}
	}
	return nil
}

// checkKubeletKey accepts kubelet's key names: short, printable ASCII.
// They are kept in the record and logged, so a hostile one must not carry
// control characters or look-alikes.
func checkKubeletKey(k string) error {
	ok := len(k) <= 128
	for i := 0; i < len(k) && ok; i++ {
		ok = k[i] > ' ' && k[i] < 0x7f
	}
	if !ok {
		return invalid("volume attribute key %.80q is not a kubelet key: those are at most 128 printable ASCII characters", k)
	}
	return nil
}

func unknownKey(k string) error {
	hint := ""
	for _, valid := range attrKeys {
		if strings.EqualFold(k, valid) {
			hint = fmt.Sprintf(" (did you mean %q?)", valid)
		}
	}
	shown := k
	if len(shown) > 64 || !utf8.ValidString(shown) {
		shown = fmt.Sprintf("%.64q…", shown)
	}
	return invalid("unknown volume attribute %q%s; valid attributes: %s", shown, hint, strings.Join(attrKeys, ", "))
}

// underDir reports whether path is dir or inside it.
func underDir(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
