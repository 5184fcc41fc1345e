package policy

import (
	"fmt"
	"path"
	"strings"
)

type cond int

const (
	condNone cond = iota
	condNamespace
	condServiceAccount
	condImage
	condDigest
	condInterface
	condHook
	condAttachTo
	condPriority
	condReadOnly
	condName
	condLast = condName // the last condition a rule checks
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
	if r.Reads {
		return c.failedRead(k, r)
	}
	switch k {
	case condImage:
		return !c.matchImage(ref)
	case condDigest:
		return c.requireDigest && !ref.pinned
	case condInterface:
		// Cgroup and tracing requests name no interface; network ones
		// always do: interfaces restrict network requests only.
		return c.interfaces != nil && r.Interface != "" && !matchAny(c.interfaces, r.Interface)
	case condHook:
		if r.Hook == "" && r.Interface == "" {
			// No interface: only a cgroup hook can follow, or with an
			// attachTo a tracing hook.
			return !c.allowsAny(cgroupHooks) && !(r.AttachTo != "" && c.allowsAny(tracingHooks))
		}
		// An unknown hook passes: every rule allows some hook, and the
		// request is decided again once the image names it.
		return r.Hook != "" && !contains(c.hooks, r.Hook)
	case condAttachTo:
		return c.attachTo != nil && r.AttachTo != "" && !matchAny(c.attachTo, r.AttachTo)
	case condPriority:
		// Priorities order network programs only; cgroup and tracing
		// requests name no interface, also before their hook is known.
		network := contains(networkHooks, r.Hook) || r.Hook == "" && r.Interface != ""
		return network && (r.Priority < c.minPrio || r.Priority > c.maxPrio)
	case condReadOnly:
		return c.readOnlyOnly && !r.ReadOnly
	case condName:
		return !c.allowsName(r.Name)
	}
	return false
}

// firstFailure returns the first failing condition, or condNone.
func (c *conditions) firstFailure(ref imageRef, r *Request) cond {
	for k := condImage; k <= condLast; k++ {
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
		if r.Hook == "" && r.AttachTo != "" {
			return fmt.Sprintf("%s allows hooks %s only: none of them a tracing hook (%s) or a cgroup hook (%s), which a request with attachTo and no interface is for",
				subject, quoteList(c.hooks), strings.Join(tracingHooks, ", "), strings.Join(cgroupHooks, ", "))
		}
		if r.Hook == "" {
			return fmt.Sprintf("%s allows hooks %s only, none of them a cgroup hook (%s), and the request names no interface", subject, quoteList(c.hooks), strings.Join(cgroupHooks, ", "))
		}
		return fmt.Sprintf("%s allows hooks %s only, not %q", subject, quoteList(c.hooks), r.Hook)
	case condAttachTo:
		return fmt.Sprintf("%s allows attachTo %s only", subject, quoteList(c.attachToRaw))
	case condPriority:
		return fmt.Sprintf("%s allows priorities %d..%d only, not %d", subject, c.minPrio, c.maxPrio, r.Priority)
	case condReadOnly:
		if r.Reads && !c.readOnlyOnly {
			return fmt.Sprintf("%s allows read-only map-only volumes only: set readOnly: true on the csi volume, or fromWritable: true in the rule", subject)
		}
		return fmt.Sprintf("%s allows read-only volumes only: set readOnly: true on the csi volume", subject)
	case condName:
		return c.explainName(subject, r.Name)
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
		if r.Reads {
			return Decision{Rule: rule, Reason: fmt.Sprintf("namespace %q may not read the maps of %q: %s", r.Namespace, r.Name, why)}
		}
		return Decision{Rule: rule, Reason: fmt.Sprintf("namespace %q may not load %q on %s: %s", r.Namespace, r.Image, r.target(), why)}
	}
	if r.Namespace == "" {
		return deny("", "the request carries no pod namespace")
	}
	ref, err := parseRequestRef(&r)
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
		for k := condImage; k <= condLast; k++ {
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
			Reason: fmt.Sprintf("local request may not load %q on %s: %s", r.Image, r.target(), why)}
	}
	ref, err := parseRequestRef(r)
	if err != nil {
		return deny(err.Error())
	}
	if k := c.firstFailure(ref, r); k != condNone {
		return deny(c.explain(k, "the policy's local section", ref, r))
	}
	return Decision{Allowed: true, Rule: localRule, RequireSignature: c.requireSignature}
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

// Label values of PolicyDenialsLabel for requests with no pod and for
// namespaces the policy does not name.
const (
	LocalLabel = "local"
	OtherLabel = "other"
)

// NamespaceLabel is the metric label for a request from namespace ns: ns
// itself when a rule names it exactly, LocalLabel for a local request
// (empty ns), and OtherLabel for every other namespace. A request can claim
// any namespace, so only the policy's own names may become label values:
// the set of series stays as small as the policy.
func (p *Policy) NamespaceLabel(ns string) string {
	if p == nil {
		p = defaultPolicy
	}
	switch {
	case ns == "":
		return LocalLabel
	case p.named[ns]:
		return ns
	}
	return OtherLabel
}
