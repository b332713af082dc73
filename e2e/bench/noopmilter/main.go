// Command noopmilter is the baseline of the benchmark (e2e/bench/run): a
// milter built on go-milter's Server with its NoOpMilter, which does no
// work but answers every event (go-milter's Server speaks protocol version
// 2 and asks for no skipped events and no omitted replies). Driving it
// with milter-load --v2 measures the cost of the milter protocol itself.
//
//	noopmilter --listen unix:/tmp/noop.sock
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	gomilter "github.com/emersion/go-milter"

	"github.com/dmarc-milter/dmarc-milter/milter"
)

func main() {
	listen := flag.String("listen", "", "unix:/path or inet:host:port")
	mode := flag.Uint("socket-mode", 0o666, "permission of a unix socket")
	floor := flag.Bool("floor", false, "dmarc-milter's milter server with a handler that checks nothing")
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
	if *floor {
		srv := &milter.Server{NewHandler: func() milter.Handler { return floorHandler{} }, Actions: milter.DefaultActions}
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			srv.Shutdown(context.Background())
		}()
		if err := srv.Serve(ln); err != nil && err != milter.ErrServerClosed {
			fmt.Fprintf(os.Stderr, "noopmilter: %v\n", err)
			os.Exit(1)
		}
		if network == "unix" {
			os.Remove(addr)
		}
		return
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

// floorHandler continues on every event and stamps a fixed
// Authentication-Results field, as long as dmarc-milter's for a passing
// message.
type floorHandler struct{}

func (floorHandler) Connect(*milter.Conn, string, net.IP) milter.Reply    { return milter.Continue }
func (floorHandler) Helo(*milter.Conn, string) milter.Reply               { return milter.Continue }
func (floorHandler) MailFrom(*milter.Conn, string, []string) milter.Reply { return milter.Continue }
func (floorHandler) Header(*milter.Conn, string, string) milter.Reply     { return milter.Continue }
func (floorHandler) EndOfHeaders(*milter.Conn) milter.Reply               { return milter.Continue }
func (floorHandler) Body(*milter.Conn, []byte) milter.Reply               { return milter.Continue }
func (floorHandler) Abort(*milter.Conn)                                   {}
func (floorHandler) Close(*milter.Conn)                                   {}

func (floorHandler) EndOfMessage(c *milter.Conn) milter.Reply {
	c.InsertHeader(0, "Authentication-Results", "bench.mx;\n\tspf=pass smtp.mailfrom=d1.bench.example;\n"+
		"\tdkim=pass header.d=d1.bench.example header.s=sel1 header.a=rsa-sha256 header.b=WKt3BLCc;\n"+
		"\tdmarc=pass header.from=d1.bench.example policy.dmarc=reject")
	return milter.Continue
}
