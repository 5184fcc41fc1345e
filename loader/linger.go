package loader

// Hold adds owner to the attachment with the given key, if it exists, and
// reports whether it did. The driver holds a program this way while it
// lingers after its last volume (keepAttached): the program stays attached
// with its maps until that owner is released too.
func (l *Loader) Hold(key, owner string) bool {
	l.gc.RLock()
	defer l.gc.RUnlock()
	return l.join(key, owner) != nil
}

// Program returns a snapshot of the attachment with the given key, or nil.
// Its maps stay valid only while some owner holds it: hold it first.
func (l *Loader) Program(key string) *Program {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.entries[key]; e != nil {
		return e.snapshot(true)
	}
	return nil
}
