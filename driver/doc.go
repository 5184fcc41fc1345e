// Package driver implements bpfmount's CSI Identity and Node services.
//
// NodePublishVolume turns a volume's attributes into a loader request,
// loads and attaches the program (or joins an identical attachment), and
// mounts the program's maps at the target path; NodeUnpublishVolume undoes
// it. Each published volume has a record in the state directory, so a
// restarted driver knows what it owns. There is no controller service:
// bpfmount volumes are CSI ephemeral inline volumes.
//
// The driver uses three things through small interfaces (interfaces.go):
// the loader, the state store and the mounts of package mapfs. New wires
// the real ones; the unit tests build a bare driver on fakes and run
// without root.
//
// # Volume lifecycle
//
// A publish runs these steps, in this order (node.go):
//
//  1. Check the request: volume ID, target path, capability, secrets and
//     every volume attribute, the whole volume context bounded in keys and
//     bytes. Any csi.storage.k8s.io/ key makes it a pod's request, which
//     must name its namespace; a request with none is local (the CLI).
//     Nothing outside the process is touched, nothing is logged before.
//  2. Log the checked request, every value cut to a bounded length.
//  3. Ask the policy, on everything known before the fetch (namespace,
//     service account, image reference, interface, priority, read-only,
//     name, and the hook when the request names it); then check
//     keepAttached against the policy's cap. When the hook is not named
//     the request is denied only if no rule could allow it for any hook.
//     A denied request reads no file and contacts no registry.
//  4. Take the volume's lock.
//  5. Compare with what is there (checkExisting): the same request already
//     published succeeds at once; a different one, or a foreign mount at
//     the target, fails; a record whose mounts are gone is cleaned up and
//     the publish starts afresh.
//  6. Resolve: fetch the image (registry or oci: layout) and check the
//     request against it.
//  7. Ask the policy again when the image named the hook; check the
//     signature when the deciding rule requires one.
//  8. Claim the name, if any (names.go): under the name's lock, refuse a
//     load whose name holds a different program, unless it is another
//     version of it on the same hook, which this load upgrades in place
//     (upgrade.go). Detach programs whose keepAttached deadline passed, so
//     none is joined after it.
//  9. Create the volume (createVolume): write the publish intent, acquire
//     the program (for an upgrade: write the upgrade record, replace the
//     old program, point the older volumes' records at the new one),
//     expose the chosen maps at the target, write the record,
//     delete the intent. A failure undoes the steps done, last first
//     (an upgrade stays: the older volumes hold the new program). A
//     lingering program the volume joined is taken over (its linger
//     record deleted, the driver's hold released).
//  10. Report: one audit line, and an event on the pod.
//
// A map-only volume (from: NAME, from.go) skips the loading steps: the
// policy decides on the name and read-only; the program held under NAME
// is found from the records (none: Unavailable), held while its maps are
// exposed, and the record names no program key.
//
// An unpublish checks its arguments, takes the volume's lock and reads the
// record. Without one (or for another target) it only makes sure nothing
// of bpfmount's is mounted there. Otherwise it writes the unpublish intent,
// unmounts, records a linger deadline and adds the driver's hold when the
// volume has keepAttached, releases the program (detaching it when nothing
// else holds it), deletes the record and then the intent.
//
// A volume on the pod's own interface (interface: pod) is deferred: step 8
// loads and pins the program with no link, and a waiter per volume
// (deferred.go) asks the container runtime for the pod's sandbox and
// attaches the program in its network namespace, again in a replacement
// sandbox's, writing where it stands into the volume's status map
// (status.go). The first attempt runs before the publish returns; the
// waiter never takes the volume's lock, and unpublish stops it (and waits
// for it) before it releases the program.
//
// A uprobe in the pod's own container (container: NAME) is deferred the
// same way, with the same waiter: it asks the runtime for the pod's
// running container of that name and its main process, and the loader
// resolves attachTo's path inside that process's root and attaches for
// that process (container.go); a restarted container gets the probe
// again, a stopped one is detached.
//
// # Lifetimes
//
// A program is detached when the last of its loader owners lets go
// (lifetime.go, programs.go): its load volumes (owner: the volume ID), the
// driver while it lingers after its last volume (owner "linger:KEY", a
// record in lingers/ with the deadline), and the node's programs file
// (owner "node:NAME", a record in nodeprograms/). Each owner kind has a
// record, so a restart re-adopts them all; garbage collection keeps their
// pins. Map-only volumes own nothing: their own bpffs pins keep the maps.
//
// At start, Restore finishes or undoes interrupted upgrades, re-adopts
// every recorded attachment (volumes, lingering programs, node programs;
// deferred volumes get their waiters back), rolls back publishes and
// finishes unpublishes that a crash interrupted (their
// intents say which), and removes pins and staging mounts no volume owns.
//
// # Errors
//
// Inside the module an error carries a fault kind (package
// internal/fault); the exported RPC methods turn it into a gRPC status, once
// (errors.go). The message always says what was wrong. The codes:
//
//   - InvalidArgument: a request field or volume attribute is missing,
//     unknown or malformed; the volume context is too large; a pod's
//     request has no namespace; the image does not hold what the request
//     names (program, map, hook) or its bytecode is refused. Retrying the
//     same request cannot succeed.
//   - PermissionDenied: the node policy denies the request, a rule requires
//     a signature the image lacks, or a registry refused the credentials.
//   - NotFound: the image, its tag or the interface does not exist.
//   - AlreadyExists: the volume is published at this target with other
//     attributes, or another bpf filesystem is mounted there.
//   - FailedPrecondition: the volume is published at another target, the
//     target holds a filesystem bpfmount did not mount, the interface is
//     taken, the kernel lacks a feature, pull policy Never misses, or the
//     request's name holds a different program; a hostNetwork pod asks
//     for its own interface, or the driver has no container runtime
//     endpoint for it (or for a container's uprobe).
//   - Aborted: another operation on the same volume is in flight; retry.
//   - ResourceExhausted: a dispatcher has no free slot.
//   - Unavailable: a registry or the container runtime (interface pod,
//     container) could not be reached, or no program is loaded under a
//     map-only volume's name; retry.
//   - DeadlineExceeded, Canceled: the caller's deadline passed, or it gave
//     up.
//   - Internal: anything else (an unexpected kernel or file system error).
//
// # Locks
//
//   - Each volume ID has a lock (volumeLocks), held for a whole publish or
//     unpublish; a concurrent call for the same volume gets Aborted rather
//     than waiting, as the CSI spec asks. Garbage collection skips volumes
//     whose lock is taken.
//   - The loader serializes work per interface (direct attachments) and per
//     identity key (dispatcher members), and lets Prune run only when no
//     load or release is in flight.
//   - The in-memory volume counts (countingStore) have their own mutex,
//     held only to update or copy them.
//   - A policy is immutable; the policy watcher swaps whole policies.
//   - lingerMu serializes linger records with the driver's holds; a name's
//     lock (names) is held from the name's check to the volume's record;
//     node program syncs run one at a time.
package driver
