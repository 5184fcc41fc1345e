package programs

// TCXOrderObject returns the compiled tcx_order program.
func TCXOrderObject() []byte { return _TcxorderBytes }

// TCXOrderWideObject returns tcx_order compiled with a two-entry order_map:
// the same program with a map of another shape.
func TCXOrderWideObject() []byte { return _TcxorderwideBytes }
