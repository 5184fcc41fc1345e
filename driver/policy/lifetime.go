package policy

import (
	"fmt"
	"time"
)

// KeepAttached bounds the keepAttached volume attribute node-wide: how long
// a program may stay attached after its last volume goes.
type KeepAttached struct {
	// Default applies to volumes that do not set keepAttached.
	Default time.Duration
	// Max is the largest value a volume may ask for; 0 (the default) lets
	// no program outlive its volumes.
	Max time.Duration
}

// KeepAttached returns the node's keepAttached default and cap.
func (p *Policy) KeepAttached() KeepAttached { return p.keep }

var keepKeys = []string{"default", "max"}

// parseKeepAttached reads the document's optional keepAttached section:
//
//	keepAttached:
//	  default: 0s
//	  max: 5m
func parseKeepAttached(top map[string]any) (KeepAttached, error) {
	var k KeepAttached
	raw, ok := top["keepAttached"]
	if !ok || raw == nil {
		return k, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return k, fmt.Errorf("policy keepAttached must be a mapping with default and max, e.g. {default: 0s, max: 5m}")
	}
	if err := unknownKey("policy keepAttached", m, keepKeys, nil); err != nil {
		return k, err
	}
	for _, f := range []struct {
		name string
		dst  *time.Duration
	}{{"default", &k.Default}, {"max", &k.Max}} {
		v, ok := m[f.name]
		if !ok {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return k, fmt.Errorf("policy keepAttached.%s must be a duration string such as \"30s\" or \"5m\"", f.name)
		}
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return k, fmt.Errorf("policy keepAttached.%s: %q is not a non-negative duration such as \"30s\" or \"5m\"", f.name, s)
		}
		*f.dst = d
	}
	if k.Default > k.Max {
		return k, fmt.Errorf("policy keepAttached.default %s is over keepAttached.max %s: raise max or lower default", k.Default, k.Max)
	}
	return k, nil
}

// names are the program names (the name attribute) a rule allows.
type nameConds struct {
	fromWritable bool   // map-only volumes may be writable
	anyName      bool   // local section without names: root may use any
	allowed      []glob // nil: none (a rule must list the names it allows)
	namesRaw     []string
}

func (c *conditions) compileNames(raw []string, isRule bool) error {
	if raw == nil {
		c.anyName = !isRule
		return nil
	}
	if err := checkGlobs("names", raw, true); err != nil {
		return err
	}
	c.allowed, c.namesRaw = compileGlobs(raw), raw
	return nil
}

func (c *conditions) allowsName(name string) bool {
	return name == "" || c.anyName || matchAny(c.allowed, name)
}

func (c *conditions) explainName(subject, name string) string {
	if c.allowed == nil {
		return fmt.Sprintf("%s allows no program names, not %q: add a names list to the rule", subject, name)
	}
	return fmt.Sprintf("%s allows names %s only, not %q", subject, quoteList(c.namesRaw), name)
}

// failedRead is failed for a map-only volume: it loads nothing, so only
// the name and read-only apply.
func (c *conditions) failedRead(k cond, r *Request) bool {
	switch k {
	case condName:
		return !c.allowsName(r.Name)
	case condReadOnly:
		return !r.ReadOnly && (c.readOnlyOnly || !c.fromWritable)
	}
	return false
}

// parseRequestRef is parseRef of the request's image; a map-only volume
// has none.
func parseRequestRef(r *Request) (imageRef, error) {
	if r.Reads {
		return imageRef{}, nil
	}
	return parseRef(r.Image)
}
