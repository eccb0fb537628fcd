// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3 version pinned in
// this module's go.mod (the one the pinned Kubernetes release requires), so the test cluster
// needs no etcd package or prebuilt download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
