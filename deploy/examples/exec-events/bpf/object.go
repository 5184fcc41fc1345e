package bpf

// Object returns the compiled exec-event reporter, for packing into a
// bytecode image where the repository's files are not at hand (VM tests).
func Object() []byte { return _ExeceventsBytes }
