package loader

// SetReplaceLoaded sets the hook Replace runs between the new version's
// load and the swap; nil removes it.
func SetReplaceLoaded(f func()) { replaceLoaded = f }
