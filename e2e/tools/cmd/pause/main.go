// The pause container of every pod sandbox on the test node (containerd's sandbox_image): it
// holds the pod's namespaces open, reaps the orphans it inherits as PID 1 of a shared PID
// namespace, and exits on SIGINT or SIGTERM. Static (CGO_ENABLED=0), so its image is the binary
// alone.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
