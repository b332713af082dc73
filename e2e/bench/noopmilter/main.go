// Command noopmilter is the baseline of the benchmark (e2e/bench/run): a
// milter built on go-milter's Server with its NoOpMilter, which does no
// work but answers every event (go-milter's Server speaks protocol version
// 2 and asks for no skipped events and no omitted replies). Driving it
// with milter-load --v2 measures the cost of the milter protocol itself.
//
//	noopmilter --listen unix:/tmp/noop.sock
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	gomilter "github.com/emersion/go-milter"
)

func main() {
	listen := flag.String("listen", "", "unix:/path or inet:host:port")
	mode := flag.Uint("socket-mode", 0o666, "permission of a unix socket")
	flag.Parse()
	var network, addr string
	switch {
	case strings.HasPrefix(*listen, "unix:"):
		network, addr = "unix", strings.TrimPrefix(*listen, "unix:")
		os.Remove(addr)
	case strings.HasPrefix(*listen, "inet:"):
		network, addr = "tcp", strings.TrimPrefix(*listen, "inet:")
	default:
		fmt.Fprintln(os.Stderr, "noopmilter: --listen unix:/path or inet:host:port is required")
		os.Exit(2)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "noopmilter: %v\n", err)
		os.Exit(1)
	}
	if network == "unix" {
		if err := os.Chmod(addr, os.FileMode(*mode)); err != nil {
			fmt.Fprintf(os.Stderr, "noopmilter: %v\n", err)
			os.Exit(1)
		}
	}
	srv := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return gomilter.NoOpMilter{} },
		Actions:   gomilter.OptAddHeader | gomilter.OptChangeHeader | gomilter.OptQuarantine,
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != gomilter.ErrServerClosed {
		fmt.Fprintf(os.Stderr, "noopmilter: %v\n", err)
		os.Exit(1)
	}
	if network == "unix" {
		os.Remove(addr)
	}
}
