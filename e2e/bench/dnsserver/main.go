// Command dnsserver serves DNS zone files on loopback for the benchmark
// (e2e/bench/run) and counts the questions it receives, so that the
// benchmark can check that a burst of messages sends each distinct question
// upstream once.
//
//	dnsserver --listen 127.0.0.1:53 --control 127.0.0.1:8053 zone...
//
// The answers come from internal/dnstest (the tests' authoritative server);
// this command wraps its handler to count per question, which dnstest only
// does for names asked about one by one. The control listener answers
// GET /stats with {"total": N, "questions": {"name TYPE": n, ...}} and
// POST /reset zeroes the counts.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/miekg/dns"

	"github.com/dmarc-milter/dmarc-milter/internal/dnstest"
)

// counter counts questions and passes them on to the zone server.
type counter struct {
	next dns.Handler
	mu   sync.Mutex
	n    map[string]int
}

func (c *counter) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	c.mu.Lock()
	for _, q := range req.Question {
		c.n[fmt.Sprintf("%s %s", dns.CanonicalName(q.Name), dns.TypeToString[q.Qtype])]++
	}
	c.mu.Unlock()
	c.next.ServeDNS(w, req)
}

func (c *counter) stats() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	qs := make(map[string]int, len(c.n))
	for k, v := range c.n {
		qs[k] = v
		total += v
	}
	return map[string]any{"total": total, "questions": qs}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:53", "UDP and TCP `address` to answer on")
	control := flag.String("control", "127.0.0.1:8053", "HTTP `address` for /stats and /reset")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "dnsserver: give zone files")
		os.Exit(2)
	}
	// The zone server proper listens on a port of its own that nobody
	// uses; its handler answers what arrives at --listen.
	zones, err := dnstest.ListenAndServe("127.0.0.1:0", flag.Args()...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsserver: %v\n", err)
		os.Exit(1)
	}
	defer zones.Close()
	c := &counter{next: zones, n: map[string]int{}}

	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsserver: %v\n", err)
		os.Exit(1)
	}
	tl, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsserver: %v\n", err)
		os.Exit(1)
	}
	udp := &dns.Server{PacketConn: pc, Handler: c}
	tcp := &dns.Server{Listener: tl, Handler: c}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c.stats())
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		clear(c.n)
		c.mu.Unlock()
	})
	cl, err := net.Listen("tcp", *control)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsserver: %v\n", err)
		os.Exit(1)
	}
	go http.Serve(cl, mux)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	udp.Shutdown()
	tcp.Shutdown()
	cl.Close()
}
