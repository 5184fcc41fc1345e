package policy

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

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
	if fr.Conds.Images == nil && fr.Conds.Names == nil {
		return rule{}, errors.New(`images is required: list the image repositories this rule allows, e.g. ["registry.example/bpf/*"] (a rule for map-only volumes lists names instead)`)
	}
	c, err := compileConds(fr.Conds, true)
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
		hooks:            networkHooks,
	}
	switch {
	case fc.Images == nil && isRule && fc.Names != nil:
		// A rule for map-only volumes (from:): it loads nothing.
	case fc.Images == nil && isRule:
		return c, errors.New("images is required")
	case fc.Images == nil:
		c.anyImage = true // local section without images: anything root asks for
	default:
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
			return c, fmt.Errorf(`hooks is an empty list: omit it to allow xdp, tc and tcx, or list some of %s`, quoteList(allHooks))
		}
		for _, h := range fc.Hooks {
			if !contains(allHooks, h) {
				return c, fmt.Errorf(`hooks: unknown hook %q: valid hooks are %s`, h, quoteList(allHooks))
			}
		}
		c.hooks = fc.Hooks
	}
	if err := checkGlobs("attachTo", fc.AttachTo, true); err != nil {
		return c, err
	}
	c.attachTo = compileGlobs(fc.AttachTo)
	c.attachToRaw = fc.AttachTo
	c.fromWritable = fc.FromWritable
	if err := c.compileNames(fc.Names, isRule); err != nil {
		return c, err
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
	attachTo         []glob // nil: any target of an allowed tracing hook, any cgroup_sock_addr operation
	attachToRaw      []string
	minPrio, maxPrio int
	readOnlyOnly     bool
	nameConds        // lifetime.go
}

// cond identifies a condition, in the order conditions are checked and
// reported.

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
