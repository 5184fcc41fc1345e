package main

import "testing"

// A host run's part replaces the preamble and its own sections in place and
// keeps the sections it does not make (the VMs', Kubernetes', libxdp's),
// wherever they are; a heading inside a code block is not a section.
func TestMergeKeepsOtherSections(t *testing.T) {
	doc := `# bpfmount benchmarks

- Date: old

## Publish latency

old publish
` + "```" + `
## not a heading (profile output)
` + "```" + `

## Dispatchers (qemu VMs)

vm figures

## Side by side with libxdp

libxdp figures
`
	host := `# bpfmount benchmarks

- Date: new

## Publish latency

new publish

## Daemon

new daemon
`
	want := `# bpfmount benchmarks

- Date: new

## Publish latency

new publish

## Dispatchers (qemu VMs)

vm figures

## Side by side with libxdp

libxdp figures

## Daemon

new daemon
`
	if got := merge(doc, host); got != want {
		t.Errorf("merge:\n%s\nwant:\n%s", got, want)
	}
	// A part without a preamble (the Go benchmarks, the VMs) keeps the
	// document's; merging the same part twice changes nothing.
	vm := "## Dispatchers (qemu VMs)\n\nnew vm figures\n"
	once := merge(want, vm)
	if twice := merge(once, vm); twice != once {
		t.Errorf("merging twice:\n%s\nonce:\n%s", twice, once)
	}
	wantVM := `# bpfmount benchmarks

- Date: new

## Publish latency

new publish

## Dispatchers (qemu VMs)

new vm figures

## Side by side with libxdp

libxdp figures

## Daemon

new daemon
`
	if once != wantVM {
		t.Errorf("merge without a preamble:\n%s\nwant:\n%s", once, wantVM)
	}
	// Into a document that does not exist yet.
	if got := merge("", host); got != host {
		t.Errorf("merge into nothing:\n%q\nwant:\n%q", got, host)
	}
}
