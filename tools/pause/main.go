// pause: the sandbox process of a pod on the test node; it sleeps until told to stop (SIGINT or SIGTERM).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
