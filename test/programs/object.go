package programs

// TCXOrderObject returns the compiled tcx_order program.
func TCXOrderObject() []byte { return _TcxorderBytes }

// CgroupHooksObject returns the compiled cgroup_hooks programs.
func CgroupHooksObject() []byte { return _CgrouphooksBytes }
