package loader

import (
	"context"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// WatchInterfaces follows interface removals until ctx is done. When an
// interface with attached programs goes away (a pod's veth deleted with its
// network), the kernel has already detached them: the loader marks them
// detached, keeps their maps (volumes stay mounted and readable) and calls
// lost for each. The program is not attached again if an interface of the
// same name comes back: that is a different interface.
func (l *Loader) WatchInterfaces(ctx context.Context, lost func(*Program)) error {
	for ctx.Err() == nil {
		ch := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		errc := make(chan error, 1)
		err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
			ErrorCallback: func(err error) {
				select {
				case errc <- err:
				default:
				}
			},
		})
		if err != nil {
			return err
		}
		// Changes made while no subscription was open are caught here.
		l.sweepDetached(lost)
		func() {
			defer close(done)
			for {
				select {
				case <-ctx.Done():
					return
				case err := <-errc:
					klog.ErrorS(err, "Interface watch failed; resubscribing")
					return
				case u, ok := <-ch:
					if !ok {
						return
					}
					if u.Header.Type == unix.RTM_DELLINK {
						l.sweepDetached(lost)
					}
				}
			}
		}()
		if ctx.Err() == nil {
			time.Sleep(time.Second)
		}
	}
	return nil
}

// sweepDetached marks attachments whose link lost its interface.
func (l *Loader) sweepDetached(lost func(*Program)) {
	l.mu.Lock()
	var gone []*Program
	for _, e := range l.entries {
		lost := false
		switch {
		case !e.attached:
		case e.chain != nil:
			_, err := net.InterfaceByIndex(e.chain.Target().Ifindex)
			lost = err != nil
		default:
			lost = !linkAttached(e.link)
		}
		if lost {
			e.attached = false
			gone = append(gone, e.snapshot(false))
		}
	}
	l.mu.Unlock()
	for _, p := range gone {
		// A cgroup link loses its cgroup the same way (the pod ended
		// before its volume was unpublished); it is noticed on the next
		// interface removal.
		klog.InfoS("Attach point went away; its program is detached and its maps stay mounted",
			"target", targetName(p.Identity), "program", p.Identity.Program, "hook", p.Identity.Hook, "id", p.ID, "volumes", p.Owners)
		if lost != nil {
			lost(p)
		}
	}
}
