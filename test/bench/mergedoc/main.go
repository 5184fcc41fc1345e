// Command mergedoc puts freshly generated sections into docs/benchmarks.md
// and keeps every section it was not given: each part of make bench (the
// host run, the VMs, Kubernetes, libxdp side by side) regenerates only its
// own sections, so running one part never drops another's figures.
//
//	mergedoc DOC PART...
//
// A part is markdown: an optional preamble (text before its first "## "
// heading), which replaces the document's, then "## " sections. A section
// whose heading the document has replaces it in place; a new one is added
// at the end. Headings inside ``` code blocks do not count.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: mergedoc DOC PART... (merges each PART's sections into DOC)")
		os.Exit(2)
	}
	doc := os.Args[1]
	old, err := os.ReadFile(doc)
	if err != nil && !os.IsNotExist(err) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := string(old)
	for _, p := range os.Args[2:] {
		part, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out = merge(out, string(part))
	}
	if err := os.WriteFile(doc, []byte(out), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

type section struct{ heading, text string }

// split cuts a markdown document into its preamble and its "## " sections
// (each with its heading line and everything up to the next one).
func split(doc string) (preamble string, sections []section) {
	lines := strings.SplitAfter(doc, "\n")
	var cur *section
	var pre strings.Builder
	fenced := false
	for _, l := range lines {
		if strings.HasPrefix(l, "```") {
			fenced = !fenced
		}
		if !fenced && strings.HasPrefix(l, "## ") {
			sections = append(sections, section{heading: strings.TrimSpace(l)})
			cur = &sections[len(sections)-1]
		}
		if cur == nil {
			pre.WriteString(l)
		} else {
			cur.text += l
		}
	}
	return pre.String(), sections
}

// merge returns doc with part's preamble (when it has one) and sections.
func merge(doc, part string) string {
	pre, secs := split(doc)
	newPre, newSecs := split(part)
	if strings.TrimSpace(newPre) != "" {
		pre = newPre
	}
	for _, n := range newSecs {
		found := false
		for i := range secs {
			if secs[i].heading == n.heading {
				secs[i].text, found = n.text, true
				break
			}
		}
		if !found {
			secs = append(secs, n)
		}
	}
	var b strings.Builder
	b.WriteString(ensureBlankLine(pre))
	for i, s := range secs {
		if i < len(secs)-1 {
			b.WriteString(ensureBlankLine(s.text))
		} else {
			b.WriteString(strings.TrimRight(s.text, "\n") + "\n")
		}
	}
	return b.String()
}

// ensureBlankLine ends s with exactly one empty line, so sections stay
// apart whichever part wrote them.
func ensureBlankLine(s string) string {
	if s == "" {
		return s
	}
	return strings.TrimRight(s, "\n") + "\n\n"
}
