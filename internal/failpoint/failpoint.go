// Package failpoint crashes the process at a named step, so tests can prove
// that every step of publish and unpublish recovers from a crash.
//
// It is compiled in only with the `failpoints` build tag, and even then
// acts only when BPFMOUNT_FAILPOINT names the step; normal builds carry an
// empty Hit that the compiler removes.
package failpoint

// Env names the environment variable that selects the step to crash at.
const Env = "BPFMOUNT_FAILPOINT"

// Publish and unpublish steps, in order. A crash "at" a step happens right
// after the step completed.
var (
	PublishSteps = []string{
		"publish.intent", "loader.loaded", "loader.attached", "loader.pinned",
		"mapfs.staged", "mapfs.pinned", "mapfs.bound", "publish.record", "publish.done",
	}
	UnpublishSteps = []string{
		"unpublish.intent", "mapfs.target-unmounted", "mapfs.withdrawn", "unpublish.released", "unpublish.record",
	}
	// LingerSteps are those of keepAttached: the deadline recorded at
	// the last unpublish, before the driver's hold; and, at the deadline,
	// before and after the program's release.
	LingerSteps = []string{"unpublish.linger", "linger.expire", "linger.released"}
	// UpgradeSteps are those of an upgrade in place of a program with its
	// own link: the upgrade recorded; the new program pinned beside the
	// old; the link updated; its pin moved (the commit); the loader done,
	// before the records follow.
	UpgradeSteps = []string{"upgrade.recorded", "replace.pinned", "replace.updated", "replace.committed", "upgrade.replaced"}
	// MemberUpgradeSteps are those of an upgrade in place of a dispatcher
	// member: the upgrade recorded; the new program pinned beside the old;
	// the new revision, with it in the old one's slot, loaded, attached
	// and swapped in (the commit); the swap done, before the loader
	// records it; the loader done, before the records follow; and, after
	// the grace period, the old revision about to be torn down.
	MemberUpgradeSteps = []string{"upgrade.recorded", "replace.pinned", "chain.loaded", "chain.attached", "chain.swapped",
		"replace.updated", "upgrade.replaced", "chain.retiring"}
	// ChainSteps are the steps of a dispatcher change (loader/dispatcher):
	// the new revision's dispatcher loaded; its members attached and
	// everything pinned; the revision swapped in; and, after the grace
	// period, the old revision about to be torn down.
	// ContainerSteps are those of a container uprobe's attach, by its
	// waiter once the container runs: the filter's maps pinned; the link
	// pinned, before the process it is for is recorded.
	ContainerSteps = []string{"container.filtered", "container.linked"}
	ChainSteps     = []string{
		"chain.loaded", "chain.attached", "chain.swapped", "chain.retiring",
	}
	// PodnetSteps are those of a pod interface's attach, by its waiter
	// once the pod's sandbox runs, of a program alone (a kernel that
	// cannot chain): the link made in the sandbox's namespace; the link
	// pinned, before the namespace is recorded beside it; the loader
	// done, before the waiter's status says attached.
	PodnetSteps = []string{"podnet.attached", "podnet.linked", "deferred.attached"}
	// PodChainSteps are those of the same attach through the pod
	// interface's dispatcher: the chain change's (a first member retires
	// no revision); the member in the chain, before its namespace is
	// recorded; the loader done, before the waiter's status says attached.
	PodChainSteps = []string{"chain.loaded", "chain.attached", "chain.swapped", "podnet.joined", "deferred.attached"}
)
