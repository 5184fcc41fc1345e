package bytecode

import (
	"encoding/json"
	"fmt"
	"regexp"
)

// Label keys of bpfman's bytecode image format.
const (
	LabelPrograms = "io.ebpf.programs"
	LabelMaps     = "io.ebpf.maps"

	LabelV1ProgramType  = "io.ebpf.program_type"
	LabelV1Filename     = "io.ebpf.filename"
	LabelV1ProgramName  = "io.ebpf.program_name"
	LabelV1FunctionName = "io.ebpf.bpf_function_name"
)

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// IsIdentifier reports whether s is a plain C identifier of at most 128
// bytes: the only names programs, maps and globals can have.
func IsIdentifier(s string) bool { return identRE.MatchString(s) }

// Labels is the parsed description an image gives of its object.
type Labels struct {
	Programs map[string]string
	Maps     map[string]string
	// Filename is the object's file name in the layer, when the labels say
	// (v1 only); empty means "the only file".
	Filename string
}

// ParseLabels reads the v2 labels, or the v1 labels when no v2 labels are
// present. The error says which label is wrong and why.
func ParseLabels(labels map[string]string) (*Labels, error) {
	if raw, ok := labels[LabelPrograms]; ok {
		progs, err := parseNameMap(LabelPrograms, raw)
		if err != nil {
			return nil, err
		}
		if len(progs) == 0 {
			return nil, fmt.Errorf("label %s lists no programs", LabelPrograms)
		}
		maps := map[string]string{}
		if raw, ok := labels[LabelMaps]; ok {
			if maps, err = parseNameMap(LabelMaps, raw); err != nil {
				return nil, err
			}
		}
		return &Labels{Programs: progs, Maps: maps}, nil
	}
	fn := labels[LabelV1FunctionName]
	typ := labels[LabelV1ProgramType]
	if fn == "" || typ == "" {
		return nil, fmt.Errorf("no bytecode labels: expected %s (v2) or %s and %s (v1)",
			LabelPrograms, LabelV1FunctionName, LabelV1ProgramType)
	}
	if !IsIdentifier(fn) {
		return nil, fmt.Errorf("label %s: %s is not a function name", LabelV1FunctionName, clip(fn))
	}
	if !IsIdentifier(typ) {
		return nil, fmt.Errorf("label %s: %s is not a program type", LabelV1ProgramType, clip(typ))
	}
	return &Labels{
		Programs: map[string]string{fn: typ},
		Maps:     map[string]string{},
		Filename: labels[LabelV1Filename],
	}, nil
}

// maxLabelNames bounds the programs or maps a label may list: their names
// reach error messages and records.
const maxLabelNames = 256

func parseNameMap(label, raw string) (map[string]string, error) {
	var m map[string]string
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		return nil, fmt.Errorf("label %s is not a JSON object of name to type: %v", label, err)
	}
	if len(m) > maxLabelNames {
		return nil, fmt.Errorf("label %s lists %d names, more than the %d allowed", label, len(m), maxLabelNames)
	}
	for k, v := range m {
		if !IsIdentifier(k) {
			return nil, fmt.Errorf("label %s: %s is not a plain identifier", label, clip(k))
		}
		if !IsIdentifier(v) {
			return nil, fmt.Errorf("label %s: type %s of %s is not a plain identifier", label, clip(v), clip(k))
		}
	}
	return m, nil
}
