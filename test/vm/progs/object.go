package progs

// Object returns the compiled ELF object, for tests that pack it into a
// bytecode image.
func Object() []byte { return _MembersBytes }
