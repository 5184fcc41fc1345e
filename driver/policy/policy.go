package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Request is what a publish asks for, as the policy sees it.
type Request struct {
	Local          bool   // true when the request carries no pod information (standalone CLI over the root-only socket)
	Namespace      string // pod namespace (empty when Local)
	ServiceAccount string // pod service account (may be empty)
	Pod            string // pod name (for messages only)
	Image          string // the image reference exactly as written in the volume attribute
	Interface      string
	Hook           string // "xdp", "tc" or "tcx"
	Priority       int
	ReadOnly       bool
}

// Decision is the outcome; Rule names the rule that decided ("" when none
// matched, "local" when the policy's local section decided).
type Decision struct {
	Allowed          bool
	Rule             string
	RequireSignature bool   // the deciding rule demands a verified signature; the driver enforces it after fetching
	Reason           string // full human message for denials (empty when allowed)
}

// Policy is a parsed node policy. It is immutable once parsed, so it can be
// shared between goroutines without locking.
type Policy struct {
	configured bool        // false only for Default: changes the pod denial message
	rules      []rule      // in file order
	local      *conditions // nil: local requests are allowed unconditionally
}

// Source yields the policy in force; Decide is called on each publish with
// whatever Current returns then.
type Source interface{ Current() *Policy }

type staticSource struct{ p *Policy }

func (s staticSource) Current() *Policy { return s.p }

// Static returns a Source that always yields p.
func Static(p *Policy) Source { return staticSource{p} }

const (
	apiVersion = "bpfmount.io/v1alpha1"
	kind       = "NodePolicy"
	localRule  = "local" // Decision.Rule for decisions of the local section

	minPriority = 1
	maxPriority = 1000

	noPolicyReason = "pods may not load eBPF programs on this node: no policy is configured " +
		"(set policy.rules in the Helm values or pass --policy; see docs/policy.md)"
)

var (
	allHooks      = []string{"xdp", "tc", "tcx"}
	defaultPolicy = &Policy{}
)

// Default is the policy that applies with no policy file: pods are denied,
// local requests are allowed (including oci: layouts).
func Default() *Policy { return defaultPolicy }

// ---------------------------------------------------------------------------
// Parsing

type fileDoc struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Rules      []fileRule `json:"rules"`
	Local      *fileConds `json:"local"`
}

// fileRule repeats the fields of fileConds instead of embedding it:
// sigs.k8s.io/yaml does not see through embedded structs when it keeps
// YAML 1.1 booleans (y, no, on) as strings for string fields.
type fileRule struct {
	Name             string          `json:"name"`
	Namespaces       []string        `json:"namespaces"`
	ServiceAccounts  []string        `json:"serviceAccounts"`
	Images           []string        `json:"images"`
	RequireDigest    bool            `json:"requireDigest"`
	RequireSignature bool            `json:"requireSignature"`
	Interfaces       []string        `json:"interfaces"`
	Hooks            []string        `json:"hooks"`
	Priorities       *filePriorities `json:"priorities"`
	ReadOnlyOnly     bool            `json:"readOnlyOnly"`
}

func (fr *fileRule) conds() fileConds {
	return fileConds{
		Images:           fr.Images,
		RequireDigest:    fr.RequireDigest,
		RequireSignature: fr.RequireSignature,
		Interfaces:       fr.Interfaces,
		Hooks:            fr.Hooks,
		Priorities:       fr.Priorities,
		ReadOnlyOnly:     fr.ReadOnlyOnly,
	}
}

type fileConds struct {
	Images           []string        `json:"images"`
	RequireDigest    bool            `json:"requireDigest"`
	RequireSignature bool            `json:"requireSignature"`
	Interfaces       []string        `json:"interfaces"`
	Hooks            []string        `json:"hooks"`
	Priorities       *filePriorities `json:"priorities"`
	ReadOnlyOnly     bool            `json:"readOnlyOnly"`
}

type filePriorities struct {
	Min *int `json:"min"`
	Max *int `json:"max"`
}

// Known keys per section, checked case-sensitively before decoding:
// encoding/json alone would accept "Images" for "images" and its
// unknown-field errors do not say where the field was.
var (
	docKeys  = []string{"apiVersion", "kind", "rules", "local"}
	condKeys = []string{"images", "requireDigest", "requireSignature", "interfaces", "hooks", "priorities", "readOnlyOnly"}
	ruleKeys = append([]string{"name", "namespaces", "serviceAccounts"}, condKeys...)
	prioKeys = []string{"min", "max"}
	// Fields holding strings or lists of strings.
	stringFields = []string{"apiVersion", "kind", "name", "namespaces", "serviceAccounts", "images", "interfaces", "hooks"}
	localHint    = map[string]string{
		"namespaces":      "the local section applies to requests without pod information; it takes no namespaces",
		"serviceAccounts": "the local section applies to requests without pod information; it takes no serviceAccounts",
		"name":            "the local section has no name",
	}
)

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Parse parses and validates a policy document. It is strict: unknown
// fields, empty lists, bad globs and bad ranges are errors that say what is
// wrong and how to fix it.
func Parse(data []byte) (*Policy, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("policy is not valid YAML: %w", err)
	}
	var generic any
	if err := json.Unmarshal(js, &generic); err != nil {
		return nil, fmt.Errorf("policy is not valid YAML: %w", err)
	}
	if err := checkKeys(generic); err != nil {
		return nil, err
	}
	// Keys and YAML 1.1 booleans are checked; this decode catches wrong
	// types and reports them with their field path.
	var doc fileDoc
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, fmt.Errorf("policy field %q is %s: want %s", te.Field, describeJSON(te.Value), describeType(te.Type))
		}
		return nil, fmt.Errorf("policy has a field of the wrong type: %w", err)
	}

	if doc.APIVersion != apiVersion || doc.Kind != kind {
		return nil, fmt.Errorf("policy has apiVersion %q and kind %q: want apiVersion: %s and kind: %s",
			doc.APIVersion, doc.Kind, apiVersion, kind)
	}

	p := &Policy{configured: true}
	seen := map[string]int{}
	for i, fr := range doc.Rules {
		where := fmt.Sprintf("rules[%d]", i)
		if fr.Name != "" {
			where = fmt.Sprintf("rules[%d] (%q)", i, fr.Name)
		}
		r, err := compileRule(fr, seen, i)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", where, err)
		}
		p.rules = append(p.rules, r)
	}
	if doc.Local != nil {
		c, err := compileConds(*doc.Local, false)
		if err != nil {
			return nil, fmt.Errorf("policy local: %w", err)
		}
		p.local = &c
	}
	return p, nil
}

// checkKeys walks the generic document and reports the first unknown key
// with its location and the keys that are valid there.
func checkKeys(v any) error {
	if v == nil {
		return fmt.Errorf("policy is empty: want apiVersion: %s, kind: %s and rules", apiVersion, kind)
	}
	top, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("policy must be a YAML mapping with apiVersion: %s, kind: %s and rules", apiVersion, kind)
	}
	if err := unknownKey("policy", top, docKeys, nil); err != nil {
		return err
	}
	if err := checkStrings("policy", top); err != nil {
		return err
	}
	if rules, ok := top["rules"].([]any); ok {
		for i, r := range rules {
			m, ok := r.(map[string]any)
			if !ok {
				continue // the typed decode reports the wrong type
			}
			where := fmt.Sprintf("policy rules[%d]", i)
			if err := unknownKey(where, m, ruleKeys, nil); err != nil {
				return err
			}
			if err := checkStrings(where, m); err != nil {
				return err
			}
			if pr, ok := m["priorities"].(map[string]any); ok {
				if err := unknownKey(where+".priorities", pr, prioKeys, nil); err != nil {
					return err
				}
			}
		}
	}
	if l, ok := top["local"].(map[string]any); ok {
		if err := unknownKey("policy local", l, condKeys, localHint); err != nil {
			return err
		}
		if err := checkStrings("policy local", l); err != nil {
			return err
		}
		if pr, ok := l["priorities"].(map[string]any); ok {
			if err := unknownKey("policy local.priorities", pr, prioKeys, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkStrings rejects YAML 1.1 booleans where strings belong: the YAML
// library turns an unquoted no, off or y into false or true, and a rule for
// namespace "false" would be a silent surprise.
func checkStrings(where string, m map[string]any) error {
	for _, k := range stringFields {
		v, ok := m[k]
		if !ok {
			continue
		}
		if l, ok := v.([]any); ok {
			for i, e := range l {
				if _, isBool := e.(bool); isBool {
					return fmt.Errorf("%s.%s[%d] is a YAML boolean (unquoted yes, no, on, off, y, n, true or false): quote it, e.g. \"no\"", where, k, i)
				}
			}
		} else if _, isBool := v.(bool); isBool {
			return fmt.Errorf("%s.%s is a YAML boolean (unquoted yes, no, on, off, y, n, true or false): quote it, e.g. \"no\"", where, k)
		}
	}
	return nil
}

func unknownKey(where string, m map[string]any, known []string, hints map[string]string) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic: report the same key every time
	for _, k := range keys {
		if contains(known, k) {
			continue
		}
		if h, ok := hints[k]; ok {
			return fmt.Errorf("%s: unknown field %q: %s", where, k, h)
		}
		msg := fmt.Sprintf("%s: unknown field %q", where, k)
		for _, c := range known {
			if strings.EqualFold(c, k) || strings.EqualFold(c, k+"s") || strings.EqualFold(c+"s", k) {
				return fmt.Errorf("%s (did you mean %q?)", msg, c)
			}
		}
		return fmt.Errorf("%s (valid fields: %s)", msg, strings.Join(known, ", "))
	}
	return nil
}

func compileRule(fr fileRule, seen map[string]int, i int) (rule, error) {
	if fr.Name == "" {
		return rule{}, errors.New("name is required: give every rule a unique name (it appears in denial messages)")
	}
	if fr.Name == localRule {
		return rule{}, fmt.Errorf("name %q is reserved for the local section: choose another name", localRule)
	}
	if j, dup := seen[fr.Name]; dup {
		return rule{}, fmt.Errorf("duplicate rule name %q (also rules[%d]): rule names must be unique", fr.Name, j)
	}
	seen[fr.Name] = i
	if fr.Namespaces == nil {
		return rule{}, errors.New(`namespaces is required: list the namespaces (or globs such as "net-*") this rule applies to`)
	}
	if err := checkGlobs("namespaces", fr.Namespaces, false); err != nil {
		return rule{}, err
	}
	if err := checkGlobs("serviceAccounts", fr.ServiceAccounts, true); err != nil {
		return rule{}, err
	}
	if fr.Images == nil {
		return rule{}, errors.New(`images is required: list the image repositories this rule allows, e.g. ["registry.example/bpf/*"]`)
	}
	c, err := compileConds(fr.conds(), true)
	if err != nil {
		return rule{}, err
	}
	return rule{name: fr.Name, namespaces: compileGlobs(fr.Namespaces), serviceAccounts: compileGlobs(fr.ServiceAccounts), conditions: c}, nil
}

// checkGlobs validates plain path.Match globs (namespaces, service accounts,
// interfaces). A nil list is "absent"; an explicit empty list is an error
// because it reads as "none" but would otherwise mean "any".
func checkGlobs(field string, globs []string, optional bool) error {
	if globs == nil {
		return nil
	}
	if len(globs) == 0 {
		if optional {
			return fmt.Errorf("%s is an empty list: omit the field to allow any, or list at least one pattern", field)
		}
		return fmt.Errorf("%s is an empty list: list at least one pattern", field)
	}
	for _, g := range globs {
		if g == "" {
			return fmt.Errorf("%s contains an empty pattern", field)
		}
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("%s: bad pattern %q: %v (path.Match syntax: * ? [a-z] \\c)", field, g, err)
		}
	}
	return nil
}

func compileConds(fc fileConds, isRule bool) (conditions, error) {
	c := conditions{
		requireDigest:    fc.RequireDigest,
		requireSignature: fc.RequireSignature,
		readOnlyOnly:     fc.ReadOnlyOnly,
		minPrio:          minPriority,
		maxPrio:          maxPriority,
		hooks:            allHooks,
	}
	if fc.Images == nil {
		if isRule {
			return c, errors.New("images is required")
		}
		c.anyImage = true // local section without images: anything root asks for
	} else {
		if len(fc.Images) == 0 {
			return c, errors.New("images is an empty list: list at least one repository pattern (omit it in the local section to allow any)")
		}
		for _, raw := range fc.Images {
			pat, err := compileImagePattern(raw)
			if err != nil {
				return c, fmt.Errorf("images: bad pattern %q: %w", raw, err)
			}
			c.images = append(c.images, pat)
			c.imagesRaw = append(c.imagesRaw, raw)
			if pat.oci {
				c.hasOCI = true
			}
		}
	}
	if err := checkGlobs("interfaces", fc.Interfaces, true); err != nil {
		return c, err
	}
	c.interfaces = compileGlobs(fc.Interfaces)
	c.interfacesRaw = fc.Interfaces
	if fc.Hooks != nil {
		if len(fc.Hooks) == 0 {
			return c, errors.New(`hooks is an empty list: omit it to allow all hooks, or list some of "xdp", "tc", "tcx"`)
		}
		for _, h := range fc.Hooks {
			if !contains(allHooks, h) {
				return c, fmt.Errorf(`hooks: unknown hook %q: valid hooks are "xdp", "tc" and "tcx"`, h)
			}
		}
		c.hooks = fc.Hooks
	}
	if pr := fc.Priorities; pr != nil {
		if pr.Min != nil {
			c.minPrio = *pr.Min
		}
		if pr.Max != nil {
			c.maxPrio = *pr.Max
		}
		for _, b := range []struct {
			name string
			v    int
		}{{"min", c.minPrio}, {"max", c.maxPrio}} {
			if b.v < minPriority || b.v > maxPriority {
				return c, fmt.Errorf("priorities.%s is %d: priorities range from %d to %d", b.name, b.v, minPriority, maxPriority)
			}
		}
		if c.minPrio > c.maxPrio {
			return c, fmt.Errorf("priorities: min %d is greater than max %d: swap them", c.minPrio, c.maxPrio)
		}
	}
	return c, nil
}

// imagePattern is a compiled image pattern.
type imagePattern struct {
	oci bool // "oci:/..." pattern: matches local layouts only
	// glob is matched with path.Match. For a "/**" pattern it is the part
	// before "/**", matched against the first elems path elements of the
	// repository, and at least one more element must follow.
	glob      glob
	recursive bool
	elems     int
}

func compileImagePattern(raw string) (imagePattern, error) {
	var pat imagePattern
	if raw == "" {
		return pat, errors.New("empty pattern")
	}
	if strings.HasPrefix(raw, "oci:") {
		pat.oci = true
		if !strings.HasPrefix(raw, "oci:/") {
			return pat, errors.New(`oci: patterns must be absolute paths, e.g. "oci:/srv/bytecode/*"`)
		}
	}
	g := raw
	switch {
	case raw == "**":
		pat.recursive, g = true, ""
	case strings.HasSuffix(raw, "/**"):
		pat.recursive = true
		g = strings.TrimSuffix(raw, "/**")
		pat.elems = strings.Count(g, "/") + 1
	}
	if strings.Contains(g, "**") {
		return pat, errors.New(`"**" is only allowed as the last path element ("registry.example/bpf/**")`)
	}
	rest := strings.TrimPrefix(g, "oci:")
	if pat.oci && rest != "" && path.Clean(rest) != rest {
		// References are cleaned before matching, so this could never match.
		return pat, fmt.Errorf("oci: patterns must be clean paths: write %q", "oci:"+path.Clean(rest)+strings.TrimPrefix(raw, g))
	}
	last := rest[strings.LastIndexByte(rest, '/')+1:]
	if strings.Contains(last, "@") {
		return pat, errors.New("patterns match repositories without a digest: remove the @... part (use requireDigest to demand digests)")
	}
	if strings.Contains(last, ":") {
		return pat, errors.New("patterns match repositories without a tag: remove the :tag part")
	}
	if _, err := path.Match(g, ""); err != nil {
		return pat, fmt.Errorf("%v (path.Match syntax: * ? [a-z] \\c, plus a trailing /**)", err)
	}
	pat.glob = compileGlob(g)
	return pat, nil
}

func (p imagePattern) match(repo string) bool {
	if !p.recursive {
		return p.glob.match(repo)
	}
	if p.elems == 0 { // "**": any registry repository
		return repo != ""
	}
	// Cut repo after p.elems elements; at least one more must follow.
	n := 0
	for i := 0; i < len(repo); i++ {
		if repo[i] != '/' {
			continue
		}
		if n++; n == p.elems {
			return i < len(repo)-1 && p.glob.match(repo[:i])
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Decisions

type rule struct {
	name            string
	namespaces      []glob
	serviceAccounts []glob // nil: any
	conditions
}

type conditions struct {
	anyImage         bool // local section without images
	images           []imagePattern
	imagesRaw        []string
	hasOCI           bool
	requireDigest    bool
	requireSignature bool
	interfaces       []glob // nil: any
	interfacesRaw    []string
	hooks            []string
	minPrio, maxPrio int
	readOnlyOnly     bool
}

// cond identifies a condition, in the order conditions are checked and
// reported.
type cond int

const (
	condNone cond = iota
	condNamespace
	condServiceAccount
	condImage
	condDigest
	condInterface
	condHook
	condPriority
	condReadOnly
)

// imageRef is a reference reduced to what policy matching needs.
type imageRef struct {
	repo   string // registry/repo, or "oci:" + cleaned path
	oci    bool
	pinned bool // carries an @sha256: digest
}

// parseRef strips the digest and tag from an image reference.
func parseRef(image string) (imageRef, error) {
	ref := imageRef{}
	s := image
	if strings.HasPrefix(s, "oci:") {
		ref.oci = true
		s = s[len("oci:"):]
	}
	slash := strings.LastIndexByte(s, '/')
	if at := strings.LastIndexByte(s, '@'); at > slash {
		// A malformed digest is refused rather than stripped: for an oci:
		// path, the fetcher might read "x@junk" as a directory name while the
		// policy matched "x".
		if !isSHA256Digest(s[at+1:]) {
			return ref, fmt.Errorf("invalid image reference: the digest must be sha256: followed by 64 lowercase hex digits")
		}
		ref.pinned = true
		s = s[:at]
	}
	if colon := strings.LastIndexByte(s, ':'); colon > slash {
		s = s[:colon]
	}
	if s == "" {
		return ref, fmt.Errorf("invalid image reference: no repository or path")
	}
	if ref.oci {
		// Only absolute, clean paths: patterns are absolute, and ".." after a
		// symlink resolves differently in the kernel than lexically, so
		// "oci:/srv/ok/link/../x" must not be matched as "oci:/srv/ok/x".
		if !strings.HasPrefix(s, "/") || path.Clean(s) != s {
			return ref, fmt.Errorf("invalid image reference: an oci: layout must be an absolute path without \".\", \"..\" or repeated \"/\" (e.g. oci:%s)", path.Clean("/"+s))
		}
		ref.repo = "oci:" + s
		return ref, nil
	}
	for rest := s; ; {
		e, tail, more := strings.Cut(rest, "/")
		if e == "" || e == "." || e == ".." {
			return ref, fmt.Errorf("invalid image reference: empty, \".\" or \"..\" path element")
		}
		if !more {
			break
		}
		rest = tail
	}
	ref.repo = s
	return ref, nil
}

func isSHA256Digest(d string) bool {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		c := hex[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// glob is a validated path.Match pattern. The common shapes (a literal, or
// a literal followed by one "*") skip path.Match, which is the bulk of the
// cost of Decide on large policies.
type glob struct {
	pat  string
	kind uint8
}

const (
	globExact  uint8 = iota // no metacharacters
	globPrefix              // literal + trailing "*"
	globMatch               // anything else: path.Match
)

const globMeta = `*?[\`

func compileGlob(p string) glob {
	switch {
	case !strings.ContainsAny(p, globMeta):
		return glob{p, globExact}
	case strings.HasSuffix(p, "*") && !strings.ContainsAny(p[:len(p)-1], globMeta):
		return glob{p[:len(p)-1], globPrefix}
	}
	return glob{p, globMatch}
}

func compileGlobs(ps []string) []glob {
	if ps == nil {
		return nil
	}
	gs := make([]glob, len(ps))
	for i, p := range ps {
		gs[i] = compileGlob(p)
	}
	return gs
}

func (g glob) match(s string) bool {
	switch g.kind {
	case globExact:
		return s == g.pat
	case globPrefix:
		return strings.HasPrefix(s, g.pat) && !strings.Contains(s[len(g.pat):], "/")
	}
	ok, _ := path.Match(g.pat, s)
	return ok
}

func matchAny(globs []glob, s string) bool {
	for _, g := range globs {
		if g.match(s) {
			return true
		}
	}
	return false
}

func (c *conditions) matchImage(ref imageRef) bool {
	if c.anyImage {
		return true
	}
	for _, p := range c.images {
		if p.oci == ref.oci && p.match(ref.repo) {
			return true
		}
	}
	return false
}

// failed reports whether condition k fails for the request.
func (c *conditions) failed(k cond, ref imageRef, r *Request) bool {
	switch k {
	case condImage:
		return !c.matchImage(ref)
	case condDigest:
		return c.requireDigest && !ref.pinned
	case condInterface:
		return c.interfaces != nil && !matchAny(c.interfaces, r.Interface)
	case condHook:
		return !contains(c.hooks, r.Hook)
	case condPriority:
		return r.Priority < c.minPrio || r.Priority > c.maxPrio
	case condReadOnly:
		return c.readOnlyOnly && !r.ReadOnly
	}
	return false
}

// firstFailure returns the first failing condition, or condNone.
func (c *conditions) firstFailure(ref imageRef, r *Request) cond {
	for k := condImage; k <= condReadOnly; k++ {
		if c.failed(k, ref, r) {
			return k
		}
	}
	return condNone
}

// explain says why condition k failed; subject is `rule "x"` or the local
// section.
func (c *conditions) explain(k cond, subject string, ref imageRef, r *Request) string {
	switch k {
	case condImage:
		msg := fmt.Sprintf("%s allows images %s only", subject, quoteList(c.imagesRaw))
		if ref.oci && !c.hasOCI {
			msg += ` (a local oci: layout needs an explicit "oci:/..." pattern)`
		}
		return msg
	case condDigest:
		return fmt.Sprintf("%s requires the image to be pinned by digest: write it as %s@sha256:<digest>", subject, ref.repo)
	case condInterface:
		return fmt.Sprintf("%s allows interfaces %s only", subject, quoteList(c.interfacesRaw))
	case condHook:
		return fmt.Sprintf("%s allows hooks %s only, not %q", subject, quoteList(c.hooks), r.Hook)
	case condPriority:
		return fmt.Sprintf("%s allows priorities %d..%d only, not %d", subject, c.minPrio, c.maxPrio, r.Priority)
	case condReadOnly:
		return fmt.Sprintf("%s allows read-only volumes only: set readOnly: true on the csi volume", subject)
	}
	return ""
}

func (ru *rule) matchIdentity(r *Request) cond {
	if !matchAny(ru.namespaces, r.Namespace) {
		return condNamespace
	}
	if ru.serviceAccounts != nil && !matchAny(ru.serviceAccounts, r.ServiceAccount) {
		return condServiceAccount
	}
	return condNone
}

// Decide applies the policy to a request. A nil Policy behaves as Default.
func (p *Policy) Decide(r Request) Decision {
	if p == nil {
		p = defaultPolicy
	}
	if r.Local {
		return p.decideLocal(&r)
	}
	if !p.configured {
		return Decision{Reason: noPolicyReason}
	}
	deny := func(rule, why string) Decision {
		return Decision{Rule: rule, Reason: fmt.Sprintf("namespace %q may not load %q on %q: %s", r.Namespace, r.Image, r.Interface, why)}
	}
	if r.Namespace == "" {
		return deny("", "the request carries no pod namespace")
	}
	ref, err := parseRef(r.Image)
	if err != nil {
		return deny("", err.Error())
	}
	for i := range p.rules {
		ru := &p.rules[i]
		if ru.matchIdentity(&r) != condNone {
			continue
		}
		// First identity match decides; no fall-through.
		if k := ru.firstFailure(ref, &r); k != condNone {
			d := deny(ru.name, ru.explain(k, fmt.Sprintf("rule %q", ru.name), ref, &r))
			d.RequireSignature = ru.requireSignature
			return d
		}
		return Decision{Allowed: true, Rule: ru.name, RequireSignature: ru.requireSignature}
	}
	return deny("", p.noMatch(ref, &r))
}

// noMatch builds the "no rule matches" reason, naming the closest rule.
func (p *Policy) noMatch(ref imageRef, r *Request) string {
	if len(p.rules) == 0 {
		return "no rule matches (the node policy has no rules)"
	}
	best, bestFails, bestFirst := -1, 0, condNone
	for i := range p.rules {
		ru := &p.rules[i]
		fails, first := 0, condNone
		if !matchAny(ru.namespaces, r.Namespace) {
			fails, first = 1, condNamespace
		}
		if ru.serviceAccounts != nil && !matchAny(ru.serviceAccounts, r.ServiceAccount) {
			fails++
			if first == condNone {
				first = condServiceAccount
			}
		}
		for k := condImage; k <= condReadOnly; k++ {
			if ru.failed(k, ref, r) {
				fails++
			}
		}
		if best < 0 || fails < bestFails {
			best, bestFails, bestFirst = i, fails, first
		}
	}
	why := "namespace not allowed"
	if bestFirst == condServiceAccount {
		why = fmt.Sprintf("service account %q not allowed", r.ServiceAccount)
	}
	return fmt.Sprintf("no rule matches (closest rule %q: %s)", p.rules[best].name, why)
}

func (p *Policy) decideLocal(r *Request) Decision {
	if p.local == nil {
		return Decision{Allowed: true}
	}
	c := p.local
	deny := func(why string) Decision {
		return Decision{Rule: localRule, RequireSignature: c.requireSignature,
			Reason: fmt.Sprintf("local request may not load %q on %q: %s", r.Image, r.Interface, why)}
	}
	ref, err := parseRef(r.Image)
	if err != nil {
		return deny(err.Error())
	}
	if k := c.firstFailure(ref, r); k != condNone {
		return deny(c.explain(k, "the policy's local section", ref, r))
	}
	return Decision{Allowed: true, Rule: localRule, RequireSignature: c.requireSignature}
}

func describeJSON(v string) string {
	switch v {
	case "object":
		return "a mapping"
	case "array":
		return "a list"
	case "bool":
		return "true or false"
	}
	return "a " + v
}

func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		return "a list of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case reflect.String:
		return "a string"
	case reflect.Int:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

var _ Source = (*Watcher)(nil)
