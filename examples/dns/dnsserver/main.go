// Command dnsserver is the tiny DNS server of examples/dns: it answers
// questions from a file of resource records in zone-file syntax, one per
// line (blank lines and lines starting with # are skipped), which it reads
// again for every question, so that editing the file changes the answers
// at once. Records must use absolute names (ending in a dot).
//
//	go run ./examples/dns/dnsserver -addr 127.0.0.1:8053 -records examples/dns/records.txt
//	dig @127.0.0.1 -p 8053 SRV _shardcache._udp.demo.shardcache.test
//
// It answers the records of the name and type asked (ANY: every type), with
// the addresses of SRV targets as additional records; NXDOMAIN for a name
// with no record at all, an empty answer for a name that has records of
// other types only. It listens on UDP and TCP. A demo, not a DNS server.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/miekg/dns"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8053", "address to listen on (UDP and TCP)")
	records := flag.String("records", "records.txt", "file of records, read again for every question")
	verbose := flag.Bool("v", false, "log every question")
	flag.Parse()
	if _, err := load(*records); err != nil {
		log.Fatal(err)
	}
	dns.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := answer(*records, r)
		if *verbose && len(r.Question) > 0 {
			q := r.Question[0]
			log.Printf("%s %s: %s, %d answers", dns.TypeToString[q.Qtype], q.Name, dns.RcodeToString[m.Rcode], len(m.Answer))
		}
		w.WriteMsg(m)
	})
	errs := make(chan error, 2)
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: *addr, Net: network}
		go func() { errs <- srv.ListenAndServe() }()
	}
	log.Printf("dnsserver: answering from %s on %s (udp, tcp)", *records, *addr)
	log.Fatal(<-errs)
}

// answer builds the reply to r from the records in the file at path.
func answer(path string, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	rrs, err := load(path)
	if err != nil {
		log.Print(err)
		m.Rcode = dns.RcodeServerFailure
		return m
	}
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := r.Question[0]
	exists := false
	for _, rr := range rrs {
		h := rr.Header()
		if !strings.EqualFold(h.Name, q.Name) {
			continue
		}
		exists = true
		if h.Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, dns.Copy(rr))
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
		return m
	}
	for _, a := range m.Answer {
		srv, ok := a.(*dns.SRV)
		if !ok {
			continue
		}
		for _, rr := range rrs {
			h := rr.Header()
			if strings.EqualFold(h.Name, srv.Target) && (h.Rrtype == dns.TypeA || h.Rrtype == dns.TypeAAAA) {
				m.Extra = append(m.Extra, dns.Copy(rr))
			}
		}
	}
	return m
}

// load reads the records in the file at path.
func load(path string) ([]dns.RR, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rrs []dns.RR
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		if rr != nil {
			rrs = append(rrs, rr)
		}
	}
	return rrs, sc.Err()
}
