// loadgen drives one etcd v3 endpoint (etcd itself, or coordproxy serving etcd 3.4's
// v3 gRPC API from Redis) with etcd's own Go client, and compares the result files
// of several runs side by side. scripts/loadtest.sh runs it against a private etcd
// 3.4 and a private coordproxy; it is built with Debian's Go and etcd sources:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/gocache \
//	    go build -o loadgen scripts/loadgen/main.go
//
// Usage:
//
//	loadgen run [flags]
//	    -endpoints 127.0.0.1:2379      comma-separated endpoints of one cluster
//	    -label "etcd 3.4"              the name of this side in reports
//	    -workers 16                    concurrent workers per workload
//	    -clients 4                     clientv3.Client instances, workers spread over them
//	    -duration 3s                   length of one round of one workload
//	    -rounds 3                      rounds per workload; the round with the median
//	                                   ops/s is reported, with its own latencies (for
//	                                   watch, at a fixed rate, the median p99)
//	    -workloads put,get,...         default all: put,get,txn,lock,lock-handoff,
//	                                   election-handoff,stm,watch,v3lock
//	    -value-size 256                bytes per value (put, txn, watch)
//	    -prefix loadgen/               every key written starts with it
//	    -pids etcd=1234,redis=5678     server processes whose CPU (utime+stime from
//	                                   /proc/<pid>/stat) is reported per operation
//	                                   (the load generator's own is reported as
//	                                   "loadgen" beside them)
//	    -out result.json               the result file (written after every workload)
//	    -notes "etcd 3.4.23, ..."      free text to start the file's notes with
//	    -vs-endpoints 127.0.0.1:7301   a second server, measured side by side with the
//	                                   first: each workload runs against both, its rounds
//	                                   alternating (the first server's round first in
//	                                   odd rounds, the second's in even ones), so that
//	                                   what else the machine does in the meantime falls
//	                                   on both alike; its -vs-label, -vs-pids, -vs-out
//	                                   and -vs-notes are those of the first's flags.
//	                                   A server that stops answering runs no more
//	                                   workloads; the other goes on
//
//	loadgen report [-html report.html] ref.json other.json [more.json...]
//	    prints one table, a row per workload: ops/s, p50, p99 and CPU µs/op of each
//	    file, ratios to the first file, and coordproxy's targets with whether this
//	    run met them; -html also writes the table with latency CDF plots (inline SVG).
//
// Workloads (every op is timed; latencies are kept as samples per round):
//
//	put               each worker puts prefix+"put/<w>/<i%1000>"
//	get               1,000 preloaded keys, linearizable Gets of random ones
//	txn               compare-and-swap: each worker owns a key and puts it with
//	                  If(ModRevision(key) == last revision); a failed compare is an error
//	lock              uncontended concurrency.Mutex, own session and name; op = Lock+Unlock
//	lock-handoff      every worker on one Mutex; op = one handoff, timed from the
//	                  holder's Unlock call to the next holder's Lock return
//	election-handoff  every worker campaigns on one Election; op = one handoff, timed
//	                  from the leader's Resign call to the next Campaign return
//	stm               bank of 100 accounts, serializable concurrency.NewSTM transfers;
//	                  op = a committed transfer; the total is checked after each round
//	watch             8 prefix watchers, 16 writers paced to 1,000 puts/s in total whose
//	                  values carry the send time; op = an event delivered to a watcher,
//	                  timed send to receive; every watcher must see every revision, in order
//	v3lock            etcd's server-side Lock service, own lease and name; op = Lock+Unlock
//
// The result file:
//
//	{"label": "etcd 3.4", "endpoint": "...", "workers": 16, "notes": "...",
//	 "results": [{"workload": "put", "ops_per_sec": 9812.3, "p50_us": 1400, "p90_us": 2000,
//	              "p99_us": 4100, "max_us": 9000, "ops": 29437, "cpu_us_per_op": {"etcd": 81.2},
//	              "histogram": {"bounds_us": [...], "counts": [...]}}]}
//
// cpu_us_per_op and histogram are optional (coordbench writes the same shape for the
// Swift library). The histogram has 10 log-spaced buckets per decade from 10 µs to
// 10 s: counts[i] is the number of ops with latency in (bounds_us[i-1], bounds_us[i]]
// (the first bucket holds everything up to 10 µs, the last everything above 7.94 s).
// A workload that fails a check is left out of "results" and named in "notes";
// loadgen run then exits 1 after writing the file. Connection failures (5 s dial
// timeout) exit 1 at once, naming the endpoint.
//
// Watch writers are closed loops on their slots of the 1,000 puts/s schedule: when
// a put takes longer than 16 ms, the writers fall behind and fewer puts are made.
//
// loadgen also watches the clients' gRPC connections: connections the server ends,
// the GOAWAY messages gRPC logs and the requests gRPC sends again transparently
// (which it does when a GOAWAY or REFUSED_STREAM marks them unprocessed) are printed
// per workload and added to "notes".
//
// Every round ends by itself after -duration (operations in flight get 30 s more);
// a watchdog ends the run (exit 1) if a workload is still going after 2 minutes plus
// (-duration + 60 s) per round, per server measured.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"go.etcd.io/etcd/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/stats"
)

// ---------------------------------------------------------------------------
// Result file

type Histogram struct {
	BoundsUs []float64 `json:"bounds_us"`
	Counts   []int64   `json:"counts"`
}

type Result struct {
	Workload   string             `json:"workload"`
	OpsPerSec  float64            `json:"ops_per_sec"`
	P50Us      float64            `json:"p50_us"`
	P90Us      float64            `json:"p90_us"`
	P99Us      float64            `json:"p99_us"`
	MaxUs      float64            `json:"max_us"`
	Ops        int64              `json:"ops"`
	CPUUsPerOp map[string]float64 `json:"cpu_us_per_op,omitempty"`
	Histogram  *Histogram         `json:"histogram,omitempty"`
}

type ResultFile struct {
	Label    string   `json:"label"`
	Endpoint string   `json:"endpoint"`
	Workers  int      `json:"workers"`
	Notes    string   `json:"notes"`
	Results  []Result `json:"results"`
}

var allWorkloads = []string{"put", "get", "txn", "lock", "lock-handoff", "election-handoff", "stm", "watch", "v3lock"}

const (
	dialTimeout  = 5 * time.Second
	setupTimeout = 60 * time.Second
	roundGrace   = 30 * time.Second // how long an op may run past its round's end
	watchRate    = 1000             // puts/s, all writers together
	watchers     = 8
	stmAccounts  = 100
	stmBalance   = 1000
	getKeys      = 1000
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "run":
		runCommand(os.Args[2:])
	case "report":
		reportCommand(os.Args[2:])
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "loadgen: unknown command %q\n", os.Args[1])
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen run -endpoints host:port -label name -out result.json [-workers 16] [-clients 4] [-duration 3s] [-rounds 3] [-workloads put,get,...] [-value-size 256] [-prefix loadgen/] [-pids name=pid,...] [-notes text]")
	fmt.Fprintln(os.Stderr, "                   [-vs-endpoints host:port -vs-label name -vs-out result.json [-vs-pids name=pid,...] [-vs-notes text]]")
	fmt.Fprintln(os.Stderr, "       loadgen report [-html report.html] ref.json other.json [more.json...]")
	os.Exit(2)
}

func fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(1)
}

// ---------------------------------------------------------------------------
// loadgen run

type namedPID struct {
	name string
	pid  int
}

type runner struct {
	label     string
	endpoints []string
	clients   []*clientv3.Client
	workers   int
	duration  time.Duration
	rounds    int
	valueSize int
	prefix    string
	pids      []namedPID
	clkTck    float64
	out       string

	mu       sync.Mutex // guards file and failures, written from the watchdog too
	file     ResultFile
	failures []string
	baseNote string
	// transport: the events of this runner's connections; transportNotes: the
	// connections the server closed during a workload, and the requests gRPC then sent
	// again (see transportEvents).
	transport      *transportEvents
	transportNotes []string
	// stopped: the server no longer answered after a failed workload; no more are run.
	stopped bool
}

func runCommand(args []string) {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	endpoints := fs.String("endpoints", "127.0.0.1:2379", "comma-separated endpoints")
	label := fs.String("label", "etcd", "name of this side in reports")
	workers := fs.Int("workers", 16, "concurrent workers per workload")
	clients := fs.Int("clients", 4, "clientv3.Client instances")
	duration := fs.Duration("duration", 3*time.Second, "length of one round")
	rounds := fs.Int("rounds", 3, "rounds per workload (the median by ops/s is reported; for watch, by p99)")
	workloads := fs.String("workloads", strings.Join(allWorkloads, ","), "comma-separated workloads")
	valueSize := fs.Int("value-size", 256, "bytes per value")
	prefix := fs.String("prefix", "loadgen/", "key prefix")
	pids := fs.String("pids", "", "server processes to measure: name=pid,name=pid")
	out := fs.String("out", "", "result file (JSON)")
	notes := fs.String("notes", "", "free text to start the result file's notes with (what was measured: versions, build, durability settings)")
	vsEndpoints := fs.String("vs-endpoints", "", "a second server to measure side by side: each workload's rounds alternate between the two (see -vs-label, -vs-pids, -vs-out, -vs-notes)")
	vsLabel := fs.String("vs-label", "", "name of the second side in reports")
	vsPids := fs.String("vs-pids", "", "the second side's server processes: name=pid,name=pid")
	vsOut := fs.String("vs-out", "", "the second side's result file (JSON)")
	vsNotes := fs.String("vs-notes", "", "free text to start the second side's notes with")
	fs.Parse(args)
	if fs.NArg() != 0 {
		fatalf("run: unexpected arguments %q", fs.Args())
	}
	if *out == "" {
		fatalf("run: give the result file with -out")
	}
	if *workers < 1 || *clients < 1 || *rounds < 1 || *duration <= 0 || *valueSize < 0 {
		fatalf("run: -workers, -clients, -rounds and -duration must be positive")
	}
	if *prefix == "" {
		fatalf("run: -prefix must not be empty (the workloads delete their keys under it)")
	}
	if *vsEndpoints == "" && (*vsLabel != "" || *vsPids != "" || *vsOut != "" || *vsNotes != "") {
		fatalf("run: -vs-label, -vs-pids, -vs-out and -vs-notes describe the server of -vs-endpoints, which is missing")
	}
	if *vsEndpoints != "" {
		if *vsOut == "" || *vsLabel == "" {
			fatalf("run: with -vs-endpoints give the second side's result file with -vs-out and its name with -vs-label")
		}
		if abs(*vsOut) == abs(*out) {
			fatalf("run: -out and -vs-out must be different files")
		}
	}
	var selected []string
	for _, w := range strings.Split(*workloads, ",") {
		w = strings.TrimSpace(w)
		if w == "" {
			continue
		}
		if !contains(allWorkloads, w) {
			fatalf("run: unknown workload %q (known: %s)", w, strings.Join(allWorkloads, ","))
		}
		selected = append(selected, w)
	}

	clientv3.SetLogger(logged)
	load, _ := os.ReadFile("/proc/loadavg")
	loadFields := strings.Fields(string(load))
	loadText := "?"
	if len(loadFields) >= 3 {
		loadText = strings.Join(loadFields[:3], " ")
	}
	// alongside: the note telling that rounds alternated with those of another server.
	newRunner := func(label, endpoints, pids, out, notes, alongside string) *runner {
		r := &runner{
			label: label, workers: *workers, duration: *duration, rounds: *rounds,
			valueSize: *valueSize, prefix: *prefix, clkTck: clockTicks(), out: out,
			transport: &transportEvents{},
		}
		for _, e := range strings.Split(endpoints, ",") {
			if e = strings.TrimSpace(e); e != "" {
				r.endpoints = append(r.endpoints, e)
			}
		}
		if len(r.endpoints) == 0 {
			fatalf("run: no endpoints for %s", label)
		}
		if pids != "" {
			for _, item := range strings.Split(pids, ",") {
				name, pidText, ok := strings.Cut(item, "=")
				pid, err := strconv.Atoi(pidText)
				if !ok || name == "" || err != nil || pid <= 0 {
					fatalf("run: the pids of %s want name=pid,name=pid, got %q", label, item)
				}
				if _, err := readTicks(pid); err != nil {
					fatalf("run: cannot read the CPU time of %s (pid %d): %v", name, pid, err)
				}
				r.pids = append(r.pids, namedPID{name, pid})
			}
		}
		// The load generator's own CPU too: on a machine it shares with the servers it
		// bounds what they can be given.
		r.pids = append(r.pids, namedPID{"loadgen", os.Getpid()})
		for i := 0; i < *clients; i++ {
			c, err := connect(r.endpoints, r.prefix, r.transport)
			if err != nil {
				fatalf("%s: %v", r.label, err)
			}
			r.clients = append(r.clients, c)
		}
		r.baseNote = fmt.Sprintf("%sloadgen (Go clientv3 3.4): %d workers over %d clients, %d round(s) of %s per workload, the median round by ops/s reported (watch: by p99)%s; values %d B; CPU from /proc/<pid>/stat at %.0f ticks/s; started %s on %d CPUs, load average %s",
			notePrefix(notes), r.workers, len(r.clients), r.rounds, r.duration, alongside, r.valueSize, r.clkTck, time.Now().Format(time.RFC3339), runtime.NumCPU(), loadText)
		r.file = ResultFile{Label: r.label, Endpoint: strings.Join(r.endpoints, ","), Workers: r.workers, Notes: r.baseNote, Results: []Result{}}
		r.writeFile()
		return r
	}
	alongside := func(other, where string) string {
		if *vsEndpoints == "" {
			return ""
		}
		return fmt.Sprintf("; each round alternated with one of %s (%s): %s first in odd rounds, %s in even ones", other, where, *label, *vsLabel)
	}
	runners := []*runner{newRunner(*label, *endpoints, *pids, *out, *notes, alongside(*vsLabel, *vsEndpoints))}
	if *vsEndpoints != "" {
		runners = append(runners, newRunner(*vsLabel, *vsEndpoints, *vsPids, *vsOut, *vsNotes, alongside(*label, *endpoints)))
	}

	// A side whose server stopped answering runs no more workloads; the other goes on.
	for _, name := range selected {
		var active []*runner
		for _, r := range runners {
			if !r.stopped {
				active = append(active, r)
			}
		}
		if len(active) == 0 {
			break
		}
		for k, err := range runSideBySide(active, name) {
			if err == nil {
				continue
			}
			r := active[k]
			msg := fmt.Sprintf("%s %s: FAILED: %v", r.label, name, err)
			fmt.Fprintf(os.Stderr, "loadgen: %s\n", msg)
			r.mu.Lock()
			r.failures = append(r.failures, name+": "+err.Error())
			r.mu.Unlock()
			r.writeFile()
			if perr := r.probe(); perr != nil {
				r.mu.Lock()
				r.failures = append(r.failures, "stopped: "+perr.Error())
				r.mu.Unlock()
				r.writeFile()
				fmt.Fprintf(os.Stderr, "loadgen: %s: %v; the remaining workloads are not run against it\n", r.label, perr)
				r.stopped = true
			}
		}
	}
	failed := 0
	for _, r := range runners {
		for _, c := range r.clients {
			c.Close()
		}
		r.mu.Lock()
		if len(r.failures) > 0 {
			failed++
			fmt.Fprintf(os.Stderr, "loadgen: %s: %d workload(s) failed (see above and the notes in %s)\n", r.label, len(r.failures), r.out)
		}
		r.mu.Unlock()
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// abs is path's absolute form (path itself if it has none).
func abs(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}

func notePrefix(notes string) string {
	if notes = strings.TrimSpace(notes); notes != "" {
		return notes + "; "
	}
	return ""
}

func connect(endpoints []string, prefix string, events *transportEvents) (*clientv3.Client, error) {
	where := strings.Join(endpoints, ",")
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: dialTimeout,
		DialOptions: []grpc.DialOption{grpc.WithBlock(), grpc.WithStatsHandler(events)},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s within %s: %v", where, dialTimeout, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	if _, err := c.Get(ctx, prefix+"probe"); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s connected but did not answer a Get within %s: %v", where, dialTimeout, err)
	}
	return c, nil
}

// probe says whether the endpoint still answers, after a failed workload.
func (r *runner) probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	if _, err := r.clients[0].Get(ctx, r.prefix+"probe"); err != nil {
		return fmt.Errorf("%s no longer answers a Get within %s: %v", strings.Join(r.endpoints, ","), dialTimeout, err)
	}
	return nil
}

func (r *runner) writeFile() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.file.Notes = r.baseNote
	if len(r.transportNotes) > 0 {
		r.file.Notes += "; CONNECTIONS: " + strings.Join(r.transportNotes, "; ")
	}
	if len(r.failures) > 0 {
		r.file.Notes += "; FAILED: " + strings.Join(r.failures, "; ")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r.file); err != nil {
		fatalf("encoding the result file: %v", err)
	}
	data := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	tmp := r.out + ".tmp"
	if dir := filepath.Dir(r.out); dir != "" {
		os.MkdirAll(dir, 0o755)
	}
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		fatalf("writing %s: %v", r.out, err)
	}
	if err := os.Rename(tmp, r.out); err != nil {
		fatalf("writing %s: %v", r.out, err)
	}
}

func (r *runner) client(w int) *clientv3.Client { return r.clients[w%len(r.clients)] }

func (r *runner) value() string {
	b := make([]byte, r.valueSize)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return string(b)
}

// workload is one of the benchmarks: setup once, then rounds (each checked), then
// teardown. round runs until end (ops that started before end may finish after it).
type workload struct {
	// fixedRate: the workload runs at a set rate (watch), so every round has the same
	// ops/s and the median round is chosen by p99 latency, what it measures.
	fixedRate bool
	setup     func(ctx context.Context) error
	round     func(ctx context.Context, end time.Time) (outcome, error)
	check     func(ctx context.Context) error
	teardown  func(ctx context.Context) error
}

type outcome struct {
	ops     int64
	elapsed time.Duration
	samples []int64 // nanoseconds
}

type roundResult struct {
	outcome
	cpu map[string]float64
}

// workloadRun is one workload against one server: set up by begin, a round at a time
// by round, and ended by finish, so that two servers' rounds can alternate.
type workloadRun struct {
	r               *runner
	name            string
	wl              workload
	transportBefore transportSnapshot
	rounds          []roundResult
	err             error
	setupDone       bool
}

// runSideBySide runs workload `name` against each runner, the rounds alternating
// between them (with two: the first runner's round first in odd rounds, the
// second's in even ones), so that what else the machine does falls on both alike.
// It returns each runner's error (nil: its result is in its file).
func runSideBySide(runners []*runner, name string) []error {
	r0 := runners[0]
	perSide := setupTimeout + time.Duration(r0.rounds)*(r0.duration+2*roundGrace) + setupTimeout
	limit := time.Duration(len(runners)) * perSide
	watchdog := time.AfterFunc(limit, func() {
		for _, r := range runners {
			r.mu.Lock()
			r.failures = append(r.failures, fmt.Sprintf("%s: did not finish within %s", name, limit))
			r.mu.Unlock()
			r.writeFile()
		}
		fatalf("%s: did not finish within %s (a stuck operation?); giving up", name, limit)
	})
	defer watchdog.Stop()

	runs := make([]*workloadRun, len(runners))
	for i, r := range runners {
		runs[i] = r.beginWorkload(name)
	}
	for round := 1; round <= r0.rounds; round++ {
		for k := range runs {
			i := k
			if round%2 == 0 {
				i = len(runs) - 1 - k
			}
			runs[i].round(round)
		}
	}
	errs := make([]error, len(runs))
	for i, w := range runs {
		errs[i] = w.finish()
	}
	return errs
}

// beginWorkload clears the workload's keys and runs its setup.
func (r *runner) beginWorkload(name string) *workloadRun {
	w := &workloadRun{r: r, name: name, wl: r.workloadNamed(name), transportBefore: r.transport.snapshot()}
	sctx, scancel := context.WithTimeout(context.Background(), setupTimeout)
	defer scancel()
	if _, err := r.clients[0].Delete(sctx, r.prefix+name+"/", clientv3.WithPrefix()); err != nil {
		w.err = fmt.Errorf("clearing %s%s/: %v", r.prefix, name, err)
		return w
	}
	w.setupDone = true
	if w.wl.setup != nil {
		if err := w.wl.setup(sctx); err != nil {
			w.err = fmt.Errorf("setup: %w", err)
		}
	}
	return w
}

// round runs round i, unless an earlier step failed.
func (w *workloadRun) round(i int) {
	if w.err != nil {
		return
	}
	r := w.r
	before, err := r.cpuTicks()
	if err != nil {
		w.err = err
		return
	}
	end := time.Now().Add(r.duration)
	rctx, rcancel := context.WithDeadline(context.Background(), end.Add(roundGrace))
	out, err := w.wl.round(rctx, end)
	if err == nil && w.wl.check != nil {
		err = w.wl.check(rctx)
	}
	rcancel()
	if err != nil {
		w.err = fmt.Errorf("round %d/%d: %w", i, r.rounds, err)
		return
	}
	after, err := r.cpuTicks()
	if err != nil {
		w.err = err
		return
	}
	rr := roundResult{outcome: out, cpu: map[string]float64{}}
	for _, p := range r.pids {
		if out.ops > 0 {
			rr.cpu[p.name] = float64(after[p.name]-before[p.name]) / r.clkTck * 1e6 / float64(out.ops)
		}
	}
	sort.Slice(rr.samples, func(a, b int) bool { return rr.samples[a] < rr.samples[b] })
	w.rounds = append(w.rounds, rr)
	fmt.Fprintf(os.Stderr, "loadgen: %s %s round %d/%d: %s ops/s p50 %s p99 %s\n", r.label, w.name, i, r.rounds,
		fmtOps(rr.opsPerSec()), fmtLatency(percentileUs(rr.samples, 0.50)), fmtLatency(percentileUs(rr.samples, 0.99)))
}

// finish runs the teardown, clears the workload's keys and adds the median round to
// the result file; it returns the first error of the workload's steps.
func (w *workloadRun) finish() error {
	r, name := w.r, w.name
	defer func() {
		if note := r.transport.since(w.transportBefore); note != "" {
			fmt.Fprintf(os.Stderr, "loadgen: %s %s: %s\n", r.label, name, note)
			r.mu.Lock()
			r.transportNotes = append(r.transportNotes, name+": "+note)
			r.mu.Unlock()
			r.writeFile()
		}
	}()
	tctx, tcancel := context.WithTimeout(context.Background(), setupTimeout)
	defer tcancel()
	if !w.setupDone {
		return w.err
	}
	// The teardown closes what setup opened, also after a failed setup or round (the
	// first error is the one to report).
	if w.wl.teardown != nil {
		if err := w.wl.teardown(tctx); err != nil && w.err == nil {
			w.err = fmt.Errorf("teardown: %w", err)
		}
	}
	if w.err == nil {
		if _, err := r.clients[0].Delete(tctx, r.prefix+name+"/", clientv3.WithPrefix()); err != nil {
			w.err = fmt.Errorf("clearing %s%s/ at the end: %v", r.prefix, name, err)
		}
	}
	if w.err != nil {
		return w.err
	}

	rounds := w.rounds
	if w.wl.fixedRate {
		sort.SliceStable(rounds, func(a, b int) bool {
			return percentileUs(rounds[a].samples, 0.99) < percentileUs(rounds[b].samples, 0.99)
		})
	} else {
		sort.SliceStable(rounds, func(a, b int) bool { return rounds[a].opsPerSec() < rounds[b].opsPerSec() })
	}
	med := rounds[(len(rounds)-1)/2]
	res := Result{
		Workload:  name,
		OpsPerSec: round1(med.opsPerSec()),
		P50Us:     round1(percentileUs(med.samples, 0.50)),
		P90Us:     round1(percentileUs(med.samples, 0.90)),
		P99Us:     round1(percentileUs(med.samples, 0.99)),
		MaxUs:     round1(percentileUs(med.samples, 1)),
		Ops:       med.ops,
		Histogram: histogram(med.samples),
	}
	if len(med.cpu) > 0 {
		res.CPUUsPerOp = map[string]float64{}
		for k, v := range med.cpu {
			res.CPUUsPerOp[k] = round1(v)
		}
	}
	r.mu.Lock()
	r.file.Results = append(r.file.Results, res)
	r.mu.Unlock()
	r.writeFile()
	return nil
}

func (rr roundResult) opsPerSec() float64 {
	if rr.elapsed <= 0 {
		return 0
	}
	return float64(rr.ops) / rr.elapsed.Seconds()
}

func (r *runner) workloadNamed(name string) workload {
	switch name {
	case "put":
		return r.putWorkload()
	case "get":
		return r.getWorkload()
	case "txn":
		return r.txnWorkload()
	case "lock":
		return r.lockWorkload()
	case "lock-handoff":
		return r.lockHandoffWorkload()
	case "election-handoff":
		return r.electionHandoffWorkload()
	case "stm":
		return r.stmWorkload()
	case "watch":
		wl := r.watchWorkload()
		wl.fixedRate = true
		return wl
	case "v3lock":
		return r.v3lockWorkload()
	}
	panic("unknown workload " + name)
}

// firstError keeps the first error of a group of workers and cancels the others.
type firstError struct {
	once   sync.Once
	err    error
	cancel context.CancelFunc
}

func (f *firstError) set(err error) {
	f.once.Do(func() {
		f.err = err
		f.cancel()
	})
}

func describe(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (an operation was still running %s after the round's end)", err, roundGrace)
	}
	return err
}

// closedLoop runs op in every worker, back to back, until end.
func (r *runner) closedLoop(ctx context.Context, end time.Time, op func(ctx context.Context, w, i int) error) (outcome, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fe := &firstError{cancel: cancel}
	samples := make([][]int64, r.workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < r.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := op(ctx, w, i); err != nil {
					if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
						fe.set(fmt.Errorf("worker %d: %w", w, describe(err)))
					}
					return
				}
				samples[w] = append(samples[w], int64(time.Since(t0)))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if fe.err != nil {
		return outcome{}, fe.err
	}
	return merge(samples, elapsed), nil
}

func merge(samples [][]int64, elapsed time.Duration) outcome {
	var all []int64
	for _, s := range samples {
		all = append(all, s...)
	}
	return outcome{ops: int64(len(all)), elapsed: elapsed, samples: all}
}

// handoff runs every worker in a loop of acquire, release on one shared lock or
// election. An op is a handoff: from the moment a holder calls release (stored just
// before the call) to the moment the next acquire returns. Only handoffs that
// complete before end count; after end each worker acquires once more and leaves.
func (r *runner) handoff(ctx context.Context, end time.Time, acquire, release func(ctx context.Context, w int) error) (outcome, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fe := &firstError{cancel: cancel}
	samples := make([][]int64, r.workers)
	var releasedAt atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < r.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := acquire(ctx, w); err != nil {
					if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
						fe.set(fmt.Errorf("worker %d: acquire: %w", w, describe(err)))
					}
					return
				}
				now := time.Now()
				if t := releasedAt.Swap(0); t != 0 && now.Before(end) {
					samples[w] = append(samples[w], now.UnixNano()-t)
				}
				last := !now.Before(end)
				if !last {
					releasedAt.Store(time.Now().UnixNano())
				}
				if err := release(ctx, w); err != nil {
					if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
						fe.set(fmt.Errorf("worker %d: release: %w", w, describe(err)))
					}
					return
				}
				if last {
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if fe.err != nil {
		return outcome{}, fe.err
	}
	return merge(samples, end.Sub(start)), nil
}

func (r *runner) putWorkload() workload {
	val := r.value()
	return workload{round: func(ctx context.Context, end time.Time) (outcome, error) {
		return r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
			_, err := r.client(w).Put(ctx, fmt.Sprintf("%sput/%d/%d", r.prefix, w, i%1000), val)
			return err
		})
	}}
}

func (r *runner) getWorkload() workload {
	key := func(i int) string { return fmt.Sprintf("%sget/%04d", r.prefix, i) }
	rands := make([]*rand.Rand, r.workers)
	for w := range rands {
		rands[w] = rand.New(rand.NewSource(int64(w) + 1))
	}
	return workload{
		setup: func(ctx context.Context) error {
			val := r.value()
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			fe := &firstError{cancel: cancel}
			var wg sync.WaitGroup
			for w := 0; w < r.workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for i := w; i < getKeys && ctx.Err() == nil; i += r.workers {
						if _, err := r.client(w).Put(ctx, key(i), val); err != nil {
							fe.set(fmt.Errorf("preloading %s: %v", key(i), err))
							return
						}
					}
				}(w)
			}
			wg.Wait()
			return fe.err
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
				k := key(rands[w].Intn(getKeys))
				resp, err := r.client(w).Get(ctx, k)
				if err != nil {
					return err
				}
				if len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) != r.valueSize {
					return fmt.Errorf("Get %s answered %d keys (want the preloaded key of %d bytes)", k, len(resp.Kvs), r.valueSize)
				}
				return nil
			})
		},
	}
}

func (r *runner) txnWorkload() workload {
	lastRev := make([]int64, r.workers)
	key := func(w int) string { return fmt.Sprintf("%stxn/%d", r.prefix, w) }
	val := r.value()
	return workload{
		setup: func(ctx context.Context) error {
			for w := 0; w < r.workers; w++ {
				resp, err := r.client(w).Put(ctx, key(w), val)
				if err != nil {
					return fmt.Errorf("put %s: %v", key(w), err)
				}
				lastRev[w] = resp.Header.Revision
			}
			return nil
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
				k := key(w)
				resp, err := r.client(w).Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision(k), "=", lastRev[w])).
					Then(clientv3.OpPut(k, val)).Commit()
				if err != nil {
					return err
				}
				if !resp.Succeeded {
					actual := "?"
					if g, gerr := r.client(w).Get(ctx, k); gerr == nil && len(g.Kvs) == 1 {
						actual = strconv.FormatInt(g.Kvs[0].ModRevision, 10)
					}
					return fmt.Errorf("Txn(If ModRevision(%s) == %d) failed its compare, but only this worker writes the key (its mod revision is now %s, response revision %d)",
						k, lastRev[w], actual, resp.Header.Revision)
				}
				lastRev[w] = resp.Header.Revision
				return nil
			})
		},
	}
}

// sessions opens one session (TTL 60) per worker, on the worker's client.
type sessions struct {
	r    *runner
	list []*concurrency.Session
}

func (s *sessions) open(ctx context.Context) error {
	for w := 0; w < s.r.workers; w++ {
		type result struct {
			s   *concurrency.Session
			err error
		}
		ch := make(chan result, 1)
		go func(w int) {
			sess, err := concurrency.NewSession(s.r.client(w), concurrency.WithTTL(60))
			ch <- result{sess, err}
		}(w)
		select {
		case res := <-ch:
			if res.err != nil {
				return fmt.Errorf("session for worker %d: %v", w, res.err)
			}
			s.list = append(s.list, res.s)
		case <-ctx.Done():
			return fmt.Errorf("session for worker %d: %v", w, ctx.Err())
		}
	}
	return nil
}

func (s *sessions) close(ctx context.Context) error {
	var first error
	for w, sess := range s.list {
		if err := sess.Close(); err != nil && first == nil {
			first = fmt.Errorf("closing the session of worker %d: %v", w, err)
		}
	}
	s.list = nil
	return first
}

func (r *runner) lockWorkload() workload {
	ss := &sessions{r: r}
	var mutexes []*concurrency.Mutex
	return workload{
		setup: func(ctx context.Context) error {
			if err := ss.open(ctx); err != nil {
				return err
			}
			for w, s := range ss.list {
				mutexes = append(mutexes, concurrency.NewMutex(s, fmt.Sprintf("%slock/%d", r.prefix, w)))
			}
			return nil
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
				if err := mutexes[w].Lock(ctx); err != nil {
					return fmt.Errorf("Lock: %w", err)
				}
				if err := mutexes[w].Unlock(ctx); err != nil {
					return fmt.Errorf("Unlock: %w", err)
				}
				return nil
			})
		},
		teardown: ss.close,
	}
}

func (r *runner) lockHandoffWorkload() workload {
	ss := &sessions{r: r}
	var mutexes []*concurrency.Mutex
	var holders atomic.Int32
	return workload{
		setup: func(ctx context.Context) error {
			if err := ss.open(ctx); err != nil {
				return err
			}
			for _, s := range ss.list {
				mutexes = append(mutexes, concurrency.NewMutex(s, r.prefix+"lock-handoff/mutex"))
			}
			return nil
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.handoff(ctx, end,
				func(ctx context.Context, w int) error {
					if err := mutexes[w].Lock(ctx); err != nil {
						return err
					}
					if n := holders.Add(1); n != 1 {
						return fmt.Errorf("mutual exclusion violated: %d workers hold the mutex at once", n)
					}
					return nil
				},
				func(ctx context.Context, w int) error {
					holders.Add(-1)
					return mutexes[w].Unlock(ctx)
				})
		},
		teardown: ss.close,
	}
}

func (r *runner) electionHandoffWorkload() workload {
	ss := &sessions{r: r}
	var elections []*concurrency.Election
	var leaders atomic.Int32
	return workload{
		setup: func(ctx context.Context) error {
			if err := ss.open(ctx); err != nil {
				return err
			}
			for _, s := range ss.list {
				elections = append(elections, concurrency.NewElection(s, r.prefix+"election-handoff/election"))
			}
			return nil
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.handoff(ctx, end,
				func(ctx context.Context, w int) error {
					if err := elections[w].Campaign(ctx, strconv.Itoa(w)); err != nil {
						return err
					}
					if n := leaders.Add(1); n != 1 {
						return fmt.Errorf("%d workers are leaders at once", n)
					}
					return nil
				},
				func(ctx context.Context, w int) error {
					leaders.Add(-1)
					return elections[w].Resign(ctx)
				})
		},
		teardown: ss.close,
	}
}

func (r *runner) stmWorkload() workload {
	account := func(i int) string { return fmt.Sprintf("%sstm/account/%03d", r.prefix, i) }
	rands := make([]*rand.Rand, r.workers)
	for w := range rands {
		rands[w] = rand.New(rand.NewSource(int64(w) + 100))
	}
	return workload{
		setup: func(ctx context.Context) error {
			for i := 0; i < stmAccounts; i++ {
				if _, err := r.clients[0].Put(ctx, account(i), strconv.Itoa(stmBalance)); err != nil {
					return fmt.Errorf("put %s: %v", account(i), err)
				}
			}
			return nil
		},
		round: func(ctx context.Context, end time.Time) (outcome, error) {
			return r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
				rnd := rands[w]
				from := rnd.Intn(stmAccounts)
				to := (from + 1 + rnd.Intn(stmAccounts-1)) % stmAccounts
				amount := 1 + rnd.Intn(100)
				_, err := concurrency.NewSTM(r.client(w), func(s concurrency.STM) error {
					a, err := strconv.Atoi(s.Get(account(from)))
					if err != nil {
						return fmt.Errorf("account %s holds %q, not a number", account(from), s.Get(account(from)))
					}
					b, err := strconv.Atoi(s.Get(account(to)))
					if err != nil {
						return fmt.Errorf("account %s holds %q, not a number", account(to), s.Get(account(to)))
					}
					n := amount
					if n > a {
						n = a
					}
					s.Put(account(from), strconv.Itoa(a-n))
					s.Put(account(to), strconv.Itoa(b+n))
					return nil
				}, concurrency.WithIsolation(concurrency.Serializable), concurrency.WithAbortContext(ctx))
				return err
			})
		},
		check: func(ctx context.Context) error {
			resp, err := r.clients[0].Get(ctx, r.prefix+"stm/account/", clientv3.WithPrefix())
			if err != nil {
				return fmt.Errorf("reading the accounts: %v", err)
			}
			total := 0
			for _, kv := range resp.Kvs {
				n, err := strconv.Atoi(string(kv.Value))
				if err != nil {
					return fmt.Errorf("STM CHECK FAILED: account %s holds %q", kv.Key, kv.Value)
				}
				total += n
			}
			if len(resp.Kvs) != stmAccounts || total != stmAccounts*stmBalance {
				return fmt.Errorf("STM CHECK FAILED: %d accounts hold %d in total, want %d accounts holding %d", len(resp.Kvs), total, stmAccounts, stmAccounts*stmBalance)
			}
			return nil
		},
	}
}

func (r *runner) v3lockWorkload() workload {
	lockClients := make([]v3lockpb.LockClient, len(r.clients))
	for i, c := range r.clients {
		lockClients[i] = v3lockpb.NewLockClient(c.ActiveConnection())
	}
	return workload{round: func(ctx context.Context, end time.Time) (outcome, error) {
		leases := make([]clientv3.LeaseID, r.workers)
		for w := range leases {
			resp, err := r.client(w).Grant(ctx, 60)
			if err != nil {
				return outcome{}, fmt.Errorf("lease grant for worker %d: %v", w, err)
			}
			leases[w] = resp.ID
		}
		out, err := r.closedLoop(ctx, end, func(ctx context.Context, w, i int) error {
			lc := lockClients[w%len(lockClients)]
			resp, err := lc.Lock(ctx, &v3lockpb.LockRequest{Name: []byte(fmt.Sprintf("%sv3lock/%d", r.prefix, w)), Lease: int64(leases[w])})
			if err != nil {
				return fmt.Errorf("Lock: %w", err)
			}
			if _, err := lc.Unlock(ctx, &v3lockpb.UnlockRequest{Key: resp.Key}); err != nil {
				return fmt.Errorf("Unlock %q: %w", resp.Key, err)
			}
			return nil
		})
		for w, id := range leases {
			if _, rerr := r.client(w).Revoke(ctx, id); rerr != nil && err == nil {
				err = fmt.Errorf("lease revoke for worker %d: %v", w, rerr)
			}
		}
		return out, err
	}}
}

// watch: watchers on prefix+"watch/" from the round's first revision, writers
// paced to watchRate puts/s. Every watcher must see exactly the writers' revisions,
// in order.
func (r *runner) watchWorkload() workload {
	pfx := r.prefix + "watch/"
	pad := ""
	if r.valueSize > 20 {
		pad = " " + r.value()[:r.valueSize-20]
	}
	return workload{round: func(ctx context.Context, end time.Time) (outcome, error) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		fe := &firstError{cancel: cancel}
		head, err := r.clients[0].Get(ctx, pfx+"head")
		if err != nil {
			return outcome{}, fmt.Errorf("reading the current revision: %v", err)
		}
		startRev := head.Header.Revision + 1

		type watcher struct {
			revs    []int64
			events  []string // "PUT key" per revision, for the messages of failed checks
			samples []int64
			seen    atomic.Int64 // last revision received
			lastAt  atomic.Int64 // UnixNano of the last event
		}
		ws := make([]*watcher, watchers)
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		var wwg sync.WaitGroup
		for i := range ws {
			ws[i] = &watcher{}
			wch := r.client(i).Watch(wctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(startRev))
			wwg.Add(1)
			go func(i int, wt *watcher, wch clientv3.WatchChan) {
				defer wwg.Done()
				for resp := range wch {
					now := time.Now().UnixNano()
					if err := resp.Err(); err != nil {
						if wctx.Err() == nil {
							fe.set(fmt.Errorf("watcher %d: the watch ended: %v", i, err))
						}
						return
					}
					if resp.Canceled {
						if wctx.Err() == nil {
							fe.set(fmt.Errorf("watcher %d: the watch was canceled by the server (%s)", i, resp.Err()))
						}
						return
					}
					for _, ev := range resp.Events {
						rev := ev.Kv.ModRevision
						if n := len(wt.revs); n > 0 && rev <= wt.revs[n-1] {
							fe.set(fmt.Errorf("WATCH CHECK FAILED: watcher %d got revision %d (%s %s) after revision %d (%s): out of order or repeated",
								i, rev, ev.Type, ev.Kv.Key, wt.revs[n-1], wt.events[n-1]))
							return
						}
						wt.revs = append(wt.revs, rev)
						wt.events = append(wt.events, fmt.Sprintf("%s %s", ev.Type, ev.Kv.Key))
						text := string(ev.Kv.Value)
						if sp := strings.IndexByte(text, ' '); sp >= 0 {
							text = text[:sp]
						}
						sent, perr := strconv.ParseInt(text, 10, 64)
						if perr != nil {
							fe.set(fmt.Errorf("watcher %d: event for %s at revision %d carries %q, not a send time", i, ev.Kv.Key, rev, ev.Kv.Value))
							return
						}
						wt.samples = append(wt.samples, now-sent)
						wt.seen.Store(rev)
					}
					if len(resp.Events) > 0 {
						wt.lastAt.Store(now)
					}
				}
				if wctx.Err() == nil {
					fe.set(fmt.Errorf("watcher %d: the watch channel closed early", i))
				}
			}(i, ws[i], wch)
		}

		start := time.Now()
		slots := make(chan struct{})
		go func() {
			defer close(slots)
			interval := time.Second / watchRate
			for k := 0; ; k++ {
				at := start.Add(time.Duration(k) * interval)
				if !at.Before(end) {
					return
				}
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				}
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
		}()
		putRevs := make([][]int64, r.workers)
		putKeys := make([][]string, r.workers)
		var pwg sync.WaitGroup
		for w := 0; w < r.workers; w++ {
			pwg.Add(1)
			go func(w int) {
				defer pwg.Done()
				i := 0
				for range slots {
					if ctx.Err() != nil {
						return
					}
					val := strconv.FormatInt(time.Now().UnixNano(), 10) + pad
					key := fmt.Sprintf("%s%d/%d", pfx, w, i%100)
					resp, err := r.client(w).Put(ctx, key, val)
					if err != nil {
						if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
							fe.set(fmt.Errorf("writer %d: %w", w, describe(err)))
						}
						return
					}
					putRevs[w] = append(putRevs[w], resp.Header.Revision)
					putKeys[w] = append(putKeys[w], key)
					i++
				}
			}(w)
		}
		pwg.Wait()
		if fe.err != nil {
			wcancel()
			wwg.Wait()
			return outcome{}, fe.err
		}
		var want []int64
		wantKeys := map[int64]string{}
		for w, revs := range putRevs {
			want = append(want, revs...)
			for j, rev := range revs {
				if other, dup := wantKeys[rev]; dup {
					return outcome{}, fmt.Errorf("WATCH CHECK FAILED: two puts were answered with revision %d (%s and %s)", rev, other, putKeys[w][j])
				}
				wantKeys[rev] = putKeys[w][j]
			}
		}
		sort.Slice(want, func(a, b int) bool { return want[a] < want[b] })
		var maxRev int64
		if len(want) > 0 {
			maxRev = want[len(want)-1]
		}
		// Wait for every watcher to reach the last write.
		drain := time.Now().Add(10 * time.Second)
		for {
			behind := -1
			for i, wt := range ws {
				if wt.seen.Load() < maxRev {
					behind = i
					break
				}
			}
			if behind < 0 || fe.err != nil {
				break
			}
			if time.Now().After(drain) {
				fe.set(fmt.Errorf("WATCH CHECK FAILED: watcher %d has seen up to revision %d 10 s after the last write (revision %d)", behind, ws[behind].seen.Load(), maxRev))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		wcancel()
		wwg.Wait()
		if fe.err != nil {
			return outcome{}, fe.err
		}
		var last int64
		samples := make([][]int64, len(ws))
		for i, wt := range ws {
			if err := compareRevisions(wt.revs, wt.events, want, wantKeys); err != nil {
				return outcome{}, fmt.Errorf("WATCH CHECK FAILED: watcher %d: %v", i, err)
			}
			samples[i] = wt.samples
			if t := wt.lastAt.Load(); t > last {
				last = t
			}
		}
		elapsed := end.Sub(start)
		if l := time.Unix(0, last).Sub(start); l > elapsed {
			elapsed = l
		}
		return merge(samples, elapsed), nil
	}}
}

// compareRevisions checks that a watcher saw exactly the revisions the writers'
// puts were answered with, in order. events and wantKeys describe them, for messages.
func compareRevisions(got []int64, events []string, want []int64, wantKeys map[int64]string) error {
	for i := 0; i < len(want); i++ {
		if i >= len(got) {
			return fmt.Errorf("saw %d of the %d revisions written; missing from revision %d (put %s) on", len(got), len(want), want[i], wantKeys[want[i]])
		}
		if got[i] != want[i] {
			prev := "none"
			if i > 0 {
				prev = fmt.Sprintf("%d (%s)", got[i-1], events[i-1])
			}
			if got[i] > want[i] {
				return fmt.Errorf("missed revision %d (put %s): after revision %s it saw revision %d (%s)", want[i], wantKeys[want[i]], prev, got[i], events[i])
			}
			var answered []string
			for _, rev := range want {
				if "PUT "+wantKeys[rev] == events[i] {
					answered = append(answered, strconv.FormatInt(rev, 10))
				}
			}
			return fmt.Errorf("saw revision %d (%s) after revision %s, but no writer's put was answered with revision %d (the next answered was %d, put %s; the puts of that key were answered with revision(s) %s)",
				got[i], events[i], prev, got[i], want[i], wantKeys[want[i]], strings.Join(answered, ", "))
		}
	}
	if len(got) > len(want) {
		return fmt.Errorf("saw %d revisions but %d were written; the first extra is revision %d (%s)", len(got), len(want), got[len(want)], events[len(want)])
	}
	return nil
}

// ---------------------------------------------------------------------------
// Transport events

// transportEvents watches the clients' gRPC connections: as a stats handler it
// counts RPCs, their attempts (gRPC sends a request again, transparently, when a
// GOAWAY or REFUSED_STREAM says the server did not process it) and the connections
// that ended; as gRPC's logger it keeps the messages about GOAWAY frames and drops
// the rest (clientv3 discards gRPC's log by default).
// transportEvents counts one runner's RPCs, their attempts and its connections'
// ends (each runner's connections have their own); the GOAWAY messages gRPC logs go
// through its one process-wide logger, so they are counted in `logged`, shared by
// the runners, and a workload run against two servers side by side (-vs-endpoints)
// names them on both sides.
type transportEvents struct {
	rpcs, attempts, connEnds atomic.Int64
}

var logged = &goawayLog{goaways: map[string]int{}}

type goawayLog struct {
	mu      sync.Mutex
	goaways map[string]int
}

type transportSnapshot struct {
	rpcs, attempts, connEnds int64
	goaways                  map[string]int
}

func (t *transportEvents) snapshot() transportSnapshot {
	logged.mu.Lock()
	defer logged.mu.Unlock()
	g := map[string]int{}
	for k, v := range logged.goaways {
		g[k] = v
	}
	return transportSnapshot{t.rpcs.Load(), t.attempts.Load(), t.connEnds.Load(), g}
}

// since describes what happened to the connections since the snapshot; "" if nothing.
func (t *transportEvents) since(s transportSnapshot) string {
	now := t.snapshot()
	var parts []string
	if n := now.connEnds - s.connEnds; n > 0 {
		parts = append(parts, fmt.Sprintf("%d client connection(s) ended", n))
	}
	var msgs []string
	for k, v := range now.goaways {
		if d := v - s.goaways[k]; d > 0 {
			msgs = append(msgs, fmt.Sprintf("%q ×%d", k, d))
		}
	}
	sort.Strings(msgs)
	if len(msgs) > 0 {
		parts = append(parts, "gRPC logged "+strings.Join(msgs, ", "))
	}
	if n := (now.attempts - s.attempts) - (now.rpcs - s.rpcs); n > 0 {
		parts = append(parts, fmt.Sprintf("gRPC sent %d request(s) a second time, transparently, as the server had marked them unprocessed (if it had in fact processed one, a write was applied twice)", n))
	}
	return strings.Join(parts, "; ")
}

func (t *transportEvents) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}

func (t *transportEvents) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch s.(type) {
	case *stats.Begin:
		t.rpcs.Add(1)
	case *stats.OutHeader:
		t.attempts.Add(1)
	}
}

func (t *transportEvents) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (t *transportEvents) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		t.connEnds.Add(1)
	}
}

func (t *goawayLog) note(msg string) {
	if strings.Contains(strings.ToLower(msg), "goaway") {
		t.mu.Lock()
		t.goaways[strings.TrimSpace(msg)]++
		t.mu.Unlock()
	}
}

func (t *goawayLog) Info(args ...interface{})   { t.note(fmt.Sprint(args...)) }
func (t *goawayLog) Infoln(args ...interface{}) { t.note(fmt.Sprintln(args...)) }
func (t *goawayLog) Infof(format string, args ...interface{}) {
	t.note(fmt.Sprintf(format, args...))
}
func (t *goawayLog) Warning(args ...interface{})   { t.note(fmt.Sprint(args...)) }
func (t *goawayLog) Warningln(args ...interface{}) { t.note(fmt.Sprintln(args...)) }
func (t *goawayLog) Warningf(format string, args ...interface{}) {
	t.note(fmt.Sprintf(format, args...))
}
func (t *goawayLog) Error(args ...interface{})   { t.note(fmt.Sprint(args...)) }
func (t *goawayLog) Errorln(args ...interface{}) { t.note(fmt.Sprintln(args...)) }
func (t *goawayLog) Errorf(format string, args ...interface{}) {
	t.note(fmt.Sprintf(format, args...))
}
func (t *goawayLog) Fatal(args ...interface{})   { fatalf("gRPC: %s", fmt.Sprint(args...)) }
func (t *goawayLog) Fatalln(args ...interface{}) { fatalf("gRPC: %s", fmt.Sprint(args...)) }
func (t *goawayLog) Fatalf(format string, args ...interface{}) {
	fatalf("gRPC: "+format, args...)
}
func (t *goawayLog) V(l int) bool { return l <= 2 } // 2: the transport logs GOAWAYs at level 2

var _ grpclog.LoggerV2 = logged
var _ stats.Handler = &transportEvents{}

// ---------------------------------------------------------------------------
// Measurements

// clockTicks is the kernel's USER_HZ (getconf CLK_TCK), read from the auxiliary
// vector (AT_CLKTCK); 100 if it cannot be read.
func clockTicks() float64 {
	data, err := os.ReadFile("/proc/self/auxv")
	if err == nil && len(data)%16 == 0 {
		for i := 0; i+16 <= len(data); i += 16 {
			key := binary.LittleEndian.Uint64(data[i:])
			val := binary.LittleEndian.Uint64(data[i+8:])
			if key == 17 && val > 0 && val <= 10000 { // AT_CLKTCK
				return float64(val)
			}
		}
	}
	return 100
}

// readTicks returns utime+stime of a process, in clock ticks.
func readTicks(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	paren := strings.LastIndexByte(s, ')')
	if paren < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, s)
	}
	fields := strings.Fields(s[paren+1:])
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, s)
	}
	return utime + stime, nil
}

func (r *runner) cpuTicks() (map[string]int64, error) {
	ticks := map[string]int64{}
	for _, p := range r.pids {
		t, err := readTicks(p.pid)
		if err != nil {
			return nil, fmt.Errorf("cannot read the CPU time of %s (pid %d; has it exited?): %v", p.name, p.pid, err)
		}
		ticks[p.name] = t
	}
	return ticks, nil
}

// percentileUs is the nearest-rank percentile of sorted nanosecond samples, in µs.
func percentileUs(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / 1e3
}

// histogramBounds: log-spaced upper bounds, 10 per decade, 10 µs to 10 s (three
// significant digits). Bucket i counts samples in (bounds[i-1], bounds[i]]; the first
// bucket everything up to 10 µs, the last everything above 7.94 s.
func histogramBounds() []float64 {
	var bounds []float64
	for i := 0; i <= 60; i++ {
		v, _ := strconv.ParseFloat(strconv.FormatFloat(math.Pow(10, 1+float64(i)/10), 'g', 3, 64), 64)
		bounds = append(bounds, v)
	}
	return bounds
}

func histogram(sorted []int64) *Histogram {
	h := &Histogram{BoundsUs: histogramBounds()}
	h.Counts = make([]int64, len(h.BoundsUs))
	for _, ns := range sorted {
		us := float64(ns) / 1e3
		i := sort.SearchFloat64s(h.BoundsUs, us)
		if i >= len(h.Counts) {
			i = len(h.Counts) - 1
		}
		h.Counts[i]++
	}
	return h
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

// ---------------------------------------------------------------------------
// Formatting

func fmtOps(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return groupThousands(int64(math.Round(v)))
}

func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtLatency(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%.0f µs", us)
	case us < 100e3:
		return fmt.Sprintf("%.1f ms", us/1e3)
	case us < 10e6:
		return fmt.Sprintf("%.0f ms", us/1e3)
	default:
		return fmt.Sprintf("%.1f s", us/1e6)
	}
}

func fmtCPU(v float64) string {
	if v < 10 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return groupThousands(int64(math.Round(v)))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// loadgen report

type loadedFile struct {
	path string
	ResultFile
	byWorkload map[string]*Result
}

type target struct {
	text string
	// eval says whether coordproxy met the target; ok=false when it cannot be told.
	eval func(ref, cp *Result) (met bool, ok bool)
}

func opsTarget(factor float64) target {
	return target{
		text: fmt.Sprintf("ops/s ≥ %g× etcd", factor),
		eval: func(ref, cp *Result) (bool, bool) {
			if ref == nil || cp == nil {
				return false, false
			}
			return cp.OpsPerSec >= factor*ref.OpsPerSec, true
		},
	}
}

func p50Target(maxUs float64) target {
	return target{
		text: fmt.Sprintf("p50 ≤ %s", fmtLatency(maxUs)),
		eval: func(ref, cp *Result) (bool, bool) {
			if cp == nil {
				return false, false
			}
			return cp.P50Us <= maxUs, true
		},
	}
}

var targets = map[string]target{
	"put":              opsTarget(1.5),
	"get":              opsTarget(1.5),
	"txn":              opsTarget(4),
	"stm":              opsTarget(4),
	"lock-handoff":     p50Target(5000),
	"election-handoff": p50Target(5000),
	"watch": {
		text: "p99 ≤ etcd p99",
		eval: func(ref, cp *Result) (bool, bool) {
			if ref == nil || cp == nil {
				return false, false
			}
			return cp.P99Us <= ref.P99Us, true
		},
	},
}

// latencyWorkloads are those whose p50 is compared as well as their ops/s.
var latencyWorkloads = map[string]bool{"lock-handoff": true, "election-handoff": true, "watch": true}

type column struct {
	group, name string
	align       string // "l" or "r"
}

type table struct {
	intro   []string
	columns []column
	rows    [][]string
	notes   []string
}

func reportCommand(args []string) {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	htmlOut := fs.String("html", "", "also write the table and latency plots to this HTML file")
	fs.Parse(args)
	if fs.NArg() < 1 {
		fatalf("report: give at least one result file (the first is the reference)")
	}
	var files []*loadedFile
	for _, path := range fs.Args() {
		data, err := os.ReadFile(path)
		if err != nil {
			fatalf("report: %v", err)
		}
		f := &loadedFile{path: path, byWorkload: map[string]*Result{}}
		dec := json.NewDecoder(bytes.NewReader(data))
		if err := dec.Decode(&f.ResultFile); err != nil {
			fatalf("report: %s is not a result file: %v", path, err)
		}
		if f.Label == "" {
			f.Label = filepath.Base(path)
		}
		for i := range f.Results {
			f.byWorkload[f.Results[i].Workload] = &f.Results[i]
		}
		files = append(files, f)
	}
	t := buildTable(files)
	printTable(os.Stdout, t)
	if *htmlOut != "" {
		if err := writeHTML(*htmlOut, t, files); err != nil {
			fatalf("report: writing %s: %v", *htmlOut, err)
		}
		fmt.Fprintf(os.Stderr, "loadgen: wrote %s\n", *htmlOut)
	}
}

// workloadOrder: the known workloads first, in their order, then any others.
func workloadOrder(files []*loadedFile) []string {
	var order []string
	for _, w := range allWorkloads {
		for _, f := range files {
			if f.byWorkload[w] != nil {
				order = append(order, w)
				break
			}
		}
	}
	for _, f := range files {
		for _, r := range f.Results {
			if !contains(order, r.Workload) {
				order = append(order, r.Workload)
			}
		}
	}
	return order
}

func refAndProxy(files []*loadedFile) (ref, cp *loadedFile) {
	for _, f := range files {
		if f.Label == "coordproxy" && cp == nil {
			cp = f
		}
	}
	for _, f := range files {
		if f != cp && strings.HasPrefix(strings.ToLower(f.Label), "etcd") && ref == nil {
			ref = f
		}
	}
	if ref == nil && files[0] != cp {
		ref = files[0]
	}
	return ref, cp
}

func fileNames(files []*loadedFile) string {
	var parts []string
	for _, f := range files {
		parts = append(parts, fmt.Sprintf("%s (%s)", f.Label, f.path))
	}
	return strings.Join(parts, ", ")
}

func buildTable(files []*loadedFile) table {
	first := files[0]
	ref, cp := refAndProxy(files)
	t := table{}
	t.intro = append(t.intro,
		"Every figure below was measured in this run, from the result files "+fileNames(files)+"; none is quoted from elsewhere.",
		fmt.Sprintf("Latencies are of the round with the median ops/s (for watch, which runs at a fixed rate, the median p99); × columns are ratios to %s.", first.Label))
	if cp != nil && ref != nil {
		t.intro = append(t.intro, fmt.Sprintf("Targets are for coordproxy against %s; \"met\" is computed from the figures of this run.", ref.Label))
	} else if cp != nil {
		t.intro = append(t.intro, "Targets are for coordproxy; no etcd file was given, so ratio targets cannot be judged.")
	} else {
		t.intro = append(t.intro, "No file is labelled \"coordproxy\", so the targets are shown but not judged.")
	}
	t.columns = append(t.columns, column{"", "workload", "l"})
	// CPU columns per file: the process names seen in any of its results.
	cpuNames := make([][]string, len(files))
	for i, f := range files {
		seen := map[string]bool{}
		for _, r := range f.Results {
			for name := range r.CPUUsPerOp {
				if !seen[name] {
					seen[name] = true
					cpuNames[i] = append(cpuNames[i], name)
				}
			}
		}
		sort.Strings(cpuNames[i])
	}
	for i, f := range files {
		t.columns = append(t.columns, column{f.Label, "ops/s", "r"}, column{f.Label, "p50", "r"}, column{f.Label, "p99", "r"})
		for _, name := range cpuNames[i] {
			t.columns = append(t.columns, column{f.Label, "cpu µs/op " + name, "r"})
		}
		if i > 0 {
			t.columns = append(t.columns, column{f.Label, "ops/s ×", "r"}, column{f.Label, "p50 ×", "r"})
		}
	}
	t.columns = append(t.columns, column{"", "coordproxy target", "l"}, column{"", "met", "l"})

	for _, w := range workloadOrder(files) {
		row := []string{w}
		base := first.byWorkload[w]
		for i, f := range files {
			res := f.byWorkload[w]
			if res == nil {
				row = append(row, "—", "—", "—")
				for range cpuNames[i] {
					row = append(row, "—")
				}
				if i > 0 {
					row = append(row, "—", "—")
				}
				continue
			}
			row = append(row, fmtOps(res.OpsPerSec), fmtLatency(res.P50Us), fmtLatency(res.P99Us))
			for _, name := range cpuNames[i] {
				if v, ok := res.CPUUsPerOp[name]; ok {
					row = append(row, fmtCPU(v))
				} else {
					row = append(row, "—")
				}
			}
			if i > 0 {
				ratio, p50 := "—", ""
				if base != nil && base.OpsPerSec > 0 {
					ratio = fmt.Sprintf("%.2f×", res.OpsPerSec/base.OpsPerSec)
				}
				if latencyWorkloads[w] {
					p50 = "—"
					if base != nil && base.P50Us > 0 {
						p50 = fmt.Sprintf("%.2f×", res.P50Us/base.P50Us)
					}
				}
				row = append(row, ratio, p50)
			}
		}
		tg, ok := targets[w]
		if !ok {
			row = append(row, "", "")
		} else {
			var refRes, cpRes *Result
			if ref != nil {
				refRes = ref.byWorkload[w]
			}
			if cp != nil {
				cpRes = cp.byWorkload[w]
			}
			met, known := tg.eval(refRes, cpRes)
			switch {
			case cp != nil && cpRes == nil:
				row = append(row, tg.text, "no (no result)")
			case !known:
				row = append(row, tg.text, "n/a")
			case met:
				row = append(row, tg.text, "yes")
			default:
				row = append(row, tg.text, "no")
			}
		}
		t.rows = append(t.rows, row)
	}
	for _, f := range files {
		if f.Notes != "" {
			t.notes = append(t.notes, fmt.Sprintf("%s (%s, %d workers): %s", f.Label, f.Endpoint, f.Workers, f.Notes))
		}
	}
	return t
}

func printTable(out *os.File, t table) {
	fmt.Fprintln(out, "loadgen report")
	for _, line := range t.intro {
		fmt.Fprintln(out, line)
	}
	fmt.Fprintln(out)
	const gap = 2
	widths := make([]int, len(t.columns))
	for i, c := range t.columns {
		widths[i] = runeLen(c.name)
		for _, row := range t.rows {
			if n := runeLen(row[i]); n > widths[i] {
				widths[i] = n
			}
		}
	}
	// A group's label stands over its columns: widen the last one if it is longer.
	type span struct{ first, last int }
	var spans []span
	for i, c := range t.columns {
		if c.group == "" {
			continue
		}
		if n := len(spans); n > 0 && spans[n-1].last == i-1 && t.columns[i-1].group == c.group {
			spans[n-1].last = i
		} else {
			spans = append(spans, span{i, i})
		}
	}
	for _, sp := range spans {
		total := 0
		for i := sp.first; i <= sp.last; i++ {
			total += widths[i]
		}
		total += gap * (sp.last - sp.first)
		if need := runeLen(t.columns[sp.first].group); need > total {
			widths[sp.last] += need - total
		}
	}
	cell := func(text string, i int) string {
		pad := strings.Repeat(" ", widths[i]-runeLen(text))
		if t.columns[i].align == "l" {
			return text + pad
		}
		return pad + text
	}
	line := func(cells []string) {
		fmt.Fprintln(out, strings.TrimRight(strings.Join(cells, strings.Repeat(" ", gap)), " "))
	}
	// Group line.
	var b strings.Builder
	col := 0
	for _, sp := range spans {
		for ; col < sp.first; col++ {
			b.WriteString(strings.Repeat(" ", widths[col]+gap))
		}
		total := 0
		for i := sp.first; i <= sp.last; i++ {
			total += widths[i] + gap
		}
		label := t.columns[sp.first].group
		dashes := total - gap - runeLen(label) - 1
		if dashes < 0 {
			dashes = 0
		}
		b.WriteString(label + " " + strings.Repeat("-", dashes) + strings.Repeat(" ", gap))
		col = sp.last + 1
	}
	fmt.Fprintln(out, strings.TrimRight(b.String(), " "))
	var names []string
	for i, c := range t.columns {
		names = append(names, cell(c.name, i))
	}
	line(names)
	for _, row := range t.rows {
		var cells []string
		for i := range row {
			cells = append(cells, cell(row[i], i))
		}
		line(cells)
	}
	if len(t.notes) > 0 {
		fmt.Fprintln(out)
		for _, n := range t.notes {
			fmt.Fprintln(out, "note: "+n)
		}
	}
}

func runeLen(s string) int { return len([]rune(s)) }

// ---------------------------------------------------------------------------
// HTML

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"}

type svgLine struct {
	X1, Y1, X2, Y2 float64
}

type svgText struct {
	X, Y   float64
	Anchor string
	Text   string
}

type svgCurve struct {
	Color   string
	Points  string
	Dashed  bool
	Marks   []svgLine // tiny crosses at percentile points, when no histogram
	Label   string
	LegendY float64
}

type plot struct {
	Workload string
	Width    float64
	Height   float64
	Grid     []svgLine
	Axis     []svgLine
	Labels   []svgText
	Curves   []svgCurve
	LegendX  float64
	Empty    bool
}

type htmlHeaderCell struct {
	Text string
	Span int
}

type htmlPage struct {
	Title  string
	Intro  []string
	Groups []htmlHeaderCell
	Names  []string
	Rows   [][]string
	Notes  []string
	Plots  []plot
}

const pageTemplate = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
th { background: #f2f2f2; }
td.met-yes { background: #e3f4e3; }
td.met-no { background: #f8e0e0; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; margin-top: 1.5em; }
.plot h3 { margin: 0.2em 0; font-size: 15px; }
svg text { font-size: 11px; fill: #333; }
p.note { font-size: 12px; color: #555; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
{{range .Intro}}<p>{{.}}</p>
{{end}}
<table>
<tr>{{range .Groups}}<th colspan="{{.Span}}">{{.Text}}</th>{{end}}</tr>
<tr>{{range .Names}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr>{{range $i, $c := .}}{{if eq $c "yes"}}<td class="met-yes">{{$c}}</td>{{else if eq $c "no"}}<td class="met-no">{{$c}}</td>{{else if eq $c "no (no result)"}}<td class="met-no">{{$c}}</td>{{else}}<td>{{$c}}</td>{{end}}{{end}}</tr>
{{end}}</table>
{{range .Notes}}<p class="note">{{.}}</p>
{{end}}
<h2>Latency distributions</h2>
<p>Cumulative distribution of the latencies of each workload's reported round (log-scaled time axis). Dashed lines with crosses: files without a histogram, drawn through p50, p90, p99 and max only.</p>
<div class="plots">
{{range .Plots}}<div class="plot">
<h3>{{.Workload}}</h3>
{{if .Empty}}<p>no latency data</p>{{else}}<svg xmlns="http://www.w3.org/2000/svg" width="{{.Width}}" height="{{.Height}}" viewBox="0 0 {{.Width}} {{.Height}}" role="img">
<rect x="0" y="0" width="{{.Width}}" height="{{.Height}}" fill="#fff"/>
{{range .Grid}}<line x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}" stroke="#e4e4e4" stroke-width="1"/>
{{end}}{{range .Axis}}<line x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}" stroke="#555" stroke-width="1"/>
{{end}}{{range .Labels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="{{.Anchor}}">{{.Text}}</text>
{{end}}{{range .Curves}}<polyline fill="none" stroke="{{.Color}}" stroke-width="1.8" points="{{.Points}}"{{if .Dashed}} stroke-dasharray="5,3"{{end}}/>
{{$color := .Color}}{{range .Marks}}<line x1="{{.X1}}" y1="{{.Y1}}" x2="{{.X2}}" y2="{{.Y2}}" stroke="{{$color}}" stroke-width="1.5"/>
{{end}}{{end}}{{$lx := .LegendX}}{{range .Curves}}<line x1="{{$lx}}" y1="{{.LegendY}}" x2="{{plus $lx 18}}" y2="{{.LegendY}}" stroke="{{.Color}}" stroke-width="2.5"{{if .Dashed}} stroke-dasharray="5,3"{{end}}/>
<text x="{{plus $lx 22}}" y="{{plus .LegendY 4}}" text-anchor="start">{{.Label}}</text>
{{end}}</svg>{{end}}
</div>
{{end}}</div>
</body>
</html>
`

func writeHTML(path string, t table, files []*loadedFile) error {
	page := htmlPage{Title: "loadgen report", Intro: t.intro, Rows: t.rows, Notes: t.notes}
	for _, c := range t.columns {
		page.Names = append(page.Names, c.name)
		n := len(page.Groups)
		if n > 0 && c.group != "" && page.Groups[n-1].Text == c.group {
			page.Groups[n-1].Span++
		} else {
			page.Groups = append(page.Groups, htmlHeaderCell{c.group, 1})
		}
	}
	for _, w := range workloadOrder(files) {
		page.Plots = append(page.Plots, buildPlot(w, files))
	}
	tmpl, err := template.New("page").Funcs(template.FuncMap{
		"plus": func(a, b float64) float64 { return a + b },
	}).Parse(pageTemplate)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, page); err != nil {
		return err
	}
	if dir := filepath.Dir(path); dir != "" {
		os.MkdirAll(dir, 0o755)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

type cdfPoint struct{ us, frac float64 }

// cdf of one result: from its histogram, else through its percentiles.
func cdf(r *Result) (points []cdfPoint, fromHistogram bool) {
	if h := r.Histogram; h != nil && len(h.Counts) == len(h.BoundsUs) && len(h.Counts) > 0 {
		var total int64
		for _, c := range h.Counts {
			total += c
		}
		if total > 0 {
			var cum int64
			started := false
			for i, c := range h.Counts {
				if c == 0 && !started {
					continue
				}
				if !started {
					lower := h.BoundsUs[0] / math.Pow(10, 0.1)
					if i > 0 {
						lower = h.BoundsUs[i-1]
					}
					points = append(points, cdfPoint{lower, 0})
					started = true
				}
				cum += c
				points = append(points, cdfPoint{h.BoundsUs[i], float64(cum) / float64(total)})
				if cum == total {
					break
				}
			}
			return points, true
		}
	}
	for _, p := range []cdfPoint{{r.P50Us, 0.5}, {r.P90Us, 0.9}, {r.P99Us, 0.99}, {r.MaxUs, 1}} {
		if p.us > 0 {
			points = append(points, p)
		}
	}
	return points, false
}

// decadeLabel names 10^d µs: 10 µs, 100 µs, 1 ms, ..., 10 s.
func decadeLabel(d float64) string {
	switch n := int(d); {
	case n < 3:
		return fmt.Sprintf("%.0f µs", math.Pow(10, d))
	case n < 6:
		return fmt.Sprintf("%.0f ms", math.Pow(10, d-3))
	default:
		return fmt.Sprintf("%.0f s", math.Pow(10, d-6))
	}
}

func buildPlot(workload string, files []*loadedFile) plot {
	const (
		width, height = 560.0, 300.0
		left, right   = 48.0, 150.0
		top, bottom   = 12.0, 36.0
	)
	p := plot{Workload: workload, Width: width, Height: height, LegendX: width - right + 14}
	type series struct {
		label  string
		color  string
		points []cdfPoint
		hist   bool
	}
	var all []series
	lo, hi := math.Inf(1), 0.0
	for i, f := range files {
		r := f.byWorkload[workload]
		if r == nil {
			continue
		}
		pts, hist := cdf(r)
		if len(pts) == 0 {
			continue
		}
		for _, pt := range pts {
			lo = math.Min(lo, pt.us)
			hi = math.Max(hi, pt.us)
		}
		all = append(all, series{f.Label, palette[i%len(palette)], pts, hist})
	}
	if len(all) == 0 {
		p.Empty = true
		return p
	}
	lo = math.Max(lo, 1)
	hi = math.Max(hi, lo*10)
	dlo := math.Floor(math.Log10(lo))
	dhi := math.Ceil(math.Log10(hi))
	if dhi <= dlo {
		dhi = dlo + 1
	}
	plotW := width - left - right
	plotH := height - top - bottom
	x := func(us float64) float64 {
		us = math.Max(us, math.Pow(10, dlo))
		return round1(left + (math.Log10(us)-dlo)/(dhi-dlo)*plotW)
	}
	y := func(frac float64) float64 { return round1(top + (1-frac)*plotH) }
	for d := dlo; d <= dhi; d++ {
		p.Grid = append(p.Grid, svgLine{x(math.Pow(10, d)), top, x(math.Pow(10, d)), top + plotH})
		p.Labels = append(p.Labels, svgText{x(math.Pow(10, d)), top + plotH + 14, "middle", decadeLabel(d)})
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 0.9, 0.99, 1} {
		p.Grid = append(p.Grid, svgLine{left, y(f), left + plotW, y(f)})
		label := strconv.FormatFloat(f, 'f', -1, 64)
		if f == 0.99 {
			label = "" // too close to 1 to label
		}
		if label != "" {
			p.Labels = append(p.Labels, svgText{left - 5, y(f) + 4, "end", label})
		}
	}
	p.Axis = append(p.Axis, svgLine{left, top, left, top + plotH}, svgLine{left, top + plotH, left + plotW, top + plotH})
	p.Labels = append(p.Labels,
		svgText{left + plotW/2, height - 6, "middle", "latency (log scale)"},
		svgText{left - 5, top - 2, "end", "CDF"})
	for i, s := range all {
		var pts []string
		c := svgCurve{Color: s.color, Dashed: !s.hist, Label: s.label, LegendY: top + 10 + float64(i)*18}
		for _, pt := range s.points {
			px, py := x(pt.us), y(pt.frac)
			pts = append(pts, fmt.Sprintf("%g,%g", px, py))
			if !s.hist {
				c.Marks = append(c.Marks, svgLine{px - 3, py - 3, px + 3, py + 3}, svgLine{px - 3, py + 3, px + 3, py - 3})
			}
		}
		c.Points = strings.Join(pts, " ")
		p.Curves = append(p.Curves, c)
	}
	return p
}
