// Command pause is the sandbox process of the pods a local kubelet runs: the image
// registry.k8s.io/pause names, built here because no registry is reachable (scripts/images).
//
// Like Kubernetes' own pause it holds the pod's namespaces open and does nothing else: it
// exits 0 on SIGINT or SIGTERM (as PID 1 a process gets no default signal handling, so
// `sleep infinity` would make every pod stop wait out its grace period) and reaps the
// children it inherits when the pod shares one PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
