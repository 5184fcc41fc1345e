package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

type fileDoc struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Rules      []fileRule `json:"rules"`
	Local      *fileConds `json:"local"`
}

// fileRule is a rule: who it applies to, and its conditions. The
// conditions are decoded apart (see decode): sigs.k8s.io/yaml does not see
// through embedded structs when it decides which YAML scalars are strings.
type fileRule struct {
	Name            string    `json:"name"`
	Namespaces      []string  `json:"namespaces"`
	ServiceAccounts []string  `json:"serviceAccounts"`
	Conds           fileConds `json:"-"`
}

// fileConds are the conditions of a rule or of the local section.
type fileConds struct {
	Images           []string        `json:"images"`
	RequireDigest    bool            `json:"requireDigest"`
	RequireSignature bool            `json:"requireSignature"`
	Interfaces       []string        `json:"interfaces"`
	Hooks            []string        `json:"hooks"`
	AttachTo         []string        `json:"attachTo"`
	Priorities       *filePriorities `json:"priorities"`
	ReadOnlyOnly     bool            `json:"readOnlyOnly"`
	Names            []string        `json:"names"`        // lifetime.go
	FromWritable     bool            `json:"fromWritable"` // lifetime.go
}

type filePriorities struct {
	Min *int `json:"min"`
	Max *int `json:"max"`
}

// Known keys per section, checked case-sensitively before decoding:
// encoding/json alone would accept "Images" for "images" and its
// unknown-field errors do not say where the field was.
var (
	docKeys  = []string{"apiVersion", "kind", "rules", "local", "keepAttached"}
	condKeys = []string{"images", "requireDigest", "requireSignature", "interfaces", "hooks", "attachTo", "priorities", "readOnlyOnly", "names", "fromWritable"}
	ruleKeys = append([]string{"name", "namespaces", "serviceAccounts"}, condKeys...)
	prioKeys = []string{"min", "max"}
	// Fields holding strings or lists of strings.
	stringFields = []string{"apiVersion", "kind", "name", "namespaces", "serviceAccounts", "images", "interfaces", "hooks", "attachTo", "names"}
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
	doc, err := decode(data)
	if err != nil {
		return nil, err
	}

	if doc.APIVersion != apiVersion || doc.Kind != kind {
		return nil, fmt.Errorf("policy has apiVersion %q and kind %q: want apiVersion: %s and kind: %s",
			doc.APIVersion, doc.Kind, apiVersion, kind)
	}

	p := &Policy{configured: true}
	if p.keep, err = parseKeepAttached(generic.(map[string]any)); err != nil {
		return nil, err
	}
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
		for _, g := range r.namespaces {
			if g.kind == globExact {
				if p.named == nil {
					p.named = map[string]bool{}
				}
				p.named[g.pat] = true
			}
		}
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

// decode decodes the document into its typed form. Keys and YAML 1.1
// booleans are already checked, so the decode is not strict; it catches
// wrong types and reports them with their field path. The rules are decoded
// twice, once for who they apply to and once for their conditions, so that
// one conditions type serves rules and the local section alike.
func decode(data []byte) (*fileDoc, error) {
	var doc fileDoc
	var conds struct {
		Rules []fileConds `json:"rules"`
	}
	for _, v := range []any{&doc, &conds} {
		if err := yaml.Unmarshal(data, v); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) && te.Field != "" {
				return nil, fmt.Errorf("policy field %q is %s: want %s", te.Field, describeJSON(te.Value), describeType(te.Type))
			}
			return nil, fmt.Errorf("policy has a field of the wrong type: %w", err)
		}
	}
	for i := range doc.Rules {
		doc.Rules[i].Conds = conds.Rules[i]
	}
	return &doc, nil
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
