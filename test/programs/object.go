package programs

// TCXOrderObject returns the compiled tcx_order program.
func TCXOrderObject() []byte { return _TcxorderBytes }
