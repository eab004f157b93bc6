// clientcheck drives an etcd v3 endpoint with etcd's own Go client (clientv3 and
// clientv3/concurrency from Debian's golang-etcd-server-dev, built with
// GO111MODULE=off) and checks what etcd's concurrency examples check. It prints
// one "ok <scenario>" line per passed scenario and exits 1 on the first failure.
//
//	clientcheck <endpoint> all                    every scenario below, in turn
//	clientcheck <endpoint> session|mutex|election|stm|watch|lease|badinput|slowwatch|v3lock|v3election|deadline
//	                                              (v3lock, v3election: etcd's server-side Lock
//	                                              and Election services; deadline: the server
//	                                              ends a call at its grpc-timeout; not in "all";
//	                                              the test runs them against etcd too)
//	                                              (slowwatch: coordproxy only; etcd catches
//	                                              a slow watcher up later instead of resetting)
//	clientcheck <endpoint> watchapi              the Watch stream's requests raw, every
//	                                              response printed (watchapi.go; the test
//	                                              compares etcd's and coordproxy's)
//	clientcheck <endpoint> watchfragment         one revision of 3 MiB of events, watched with
//	                                              and without fragments
//	clientcheck <endpoint> idle                  a client with keep-alive pings and a watch, idle
//	                                              for 32 s, keeps its connection (idle.go)
//	clientcheck <endpoint> resume <n>            a clientv3 watch that must see <n> puts the test
//	                                              makes around a restart of the server, in order
//	                                              and once each (resume.go)
//	clientcheck <endpoint> hold <name> <n> <log>  n holds of mutex <name>, each writing
//	                                              "in <pid>" and "out <pid>" lines to <log>
//	clientcheck <endpoint> busy                  4 clients x 4 goroutines put 4,000 distinct
//	                                              keys: every put applied once, and no
//	                                              connection ever ends (no GOAWAY)
//	clientcheck <endpoint> streamend <lease>     opens raw Watch, LeaseKeepAlive (<lease>) and
//	                                              Observe streams and a Lock and a Campaign that
//	                                              wait behind <lease>'s, prints "streaming",
//	                                              then one "<call> ended <code>: <message>" line
//	                                              for each as the server stops, sorted, then
//	                                              "ok streamend"
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
	"golang.org/x/net/http2"
	"go.etcd.io/etcd/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/etcdserver/api/v3lock/v3lockpb"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// rawCodec sends bytes as they are, to put malformed protobuf on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                               { return "proto" }

// badinput: unknown methods, compressed requests, malformed protobuf and oversized
// requests get an error code (etcd's message where it has one), and the server keeps
// serving.
func badinput(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	conn := client.ActiveConnection()
	err := conn.Invoke(ctx, "/etcdserverpb.KV/NoSuchMethod", &pb.RangeRequest{Key: []byte("k")}, &pb.RangeResponse{})
	// The messages are grpc-go's, as etcd's server gives them: they name the call.
	if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() != "unknown method NoSuchMethod for service etcdserverpb.KV" {
		fail("an unknown method answered %v, want Unimplemented: unknown method NoSuchMethod for service etcdserverpb.KV", err)
	}
	err = conn.Invoke(ctx, "/etcdserverpb.NoSuchService/Range", &pb.RangeRequest{Key: []byte("k")}, &pb.RangeResponse{})
	if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() != "unknown service etcdserverpb.NoSuchService" {
		fail("an unknown service answered %v, want Unimplemented: unknown service etcdserverpb.NoSuchService", err)
	}
	// A compressed request: etcd registers no decompressor, so grpc-go's answer.
	_, err = pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("k")}, grpc.UseCompressor(gzip.Name))
	if status.Code(err) != codes.Unimplemented || status.Convert(err).Message() != `grpc: Decompressor is not installed for grpc-encoding "gzip"` {
		fail("a gzip-compressed Range answered %v, want Unimplemented: grpc: Decompressor is not installed for grpc-encoding \"gzip\"", err)
	}
	var reply []byte
	// Messages that do not decode: grpc-go's answer, as etcd gives it (the reason after
	// the colon is the decoder's own: Go's protobuf and swift-protobuf word it apart).
	err = conn.Invoke(ctx, "/etcdserverpb.KV/Range", []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, &reply, grpc.ForceCodec(rawCodec{}))
	if status.Code(err) != codes.Internal || !strings.HasPrefix(status.Convert(err).Message(), "grpc: error unmarshalling request: ") {
		fail("a malformed RangeRequest answered %v, want Internal: grpc: error unmarshalling request: ...", err)
	}
	_, err = client.Put(ctx, "big", string(make([]byte, 3*1024*1024)))
	if status.Code(err) != codes.ResourceExhausted {
		fail("a 3 MiB put answered %v, want ResourceExhausted", err)
	}
	_, err = client.Put(ctx, "big", string(make([]byte, 1600*1024)))
	if err == nil || err.Error() != "etcdserver: request is too large" {
		fail("a 1.6 MiB put answered %v, want etcdserver: request is too large", err)
	}
	// The same on a Watch stream: a request message that does not decode ends the
	// stream with Internal, as etcd's grpc-go ends it; one over the server's message
	// limit (sent past the client's own limit) with ResourceExhausted.
	watchStream := func(message []byte) error {
		desc := &grpc.StreamDesc{StreamName: "Watch", ServerStreams: true, ClientStreams: true}
		stream, err := conn.NewStream(ctx, desc, "/etcdserverpb.Watch/Watch", grpc.ForceCodec(rawCodec{}), grpc.MaxCallSendMsgSize(8<<20))
		check(err, "open a raw watch stream")
		if err := stream.SendMsg(message); err != nil {
			return err
		}
		var reply []byte
		return stream.RecvMsg(&reply)
	}
	if err = watchStream([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}); status.Code(err) != codes.Internal || !strings.HasPrefix(status.Convert(err).Message(), "grpc: failed to unmarshal the received message ") {
		fail("a malformed WatchRequest answered %v, want Internal: grpc: failed to unmarshal the received message ...", err)
	}
	oversized := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: make([]byte, 3*1024*1024)}}}
	big, err := oversized.Marshal()
	check(err, "encode a 3 MiB watch request")
	if err = watchStream(big); status.Code(err) != codes.ResourceExhausted {
		fail("a 3 MiB WatchRequest answered %v, want ResourceExhausted", err)
	}
	if _, err = client.Put(ctx, "after", "ok"); err != nil {
		fail("the server stopped serving after bad input: %v", err)
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func connect(endpoint string) *clientv3.Client {
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 20 * time.Second})
	check(err, "connect")
	return client
}

func timeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

// session: a session's lease lives while it is refreshed, and Close revokes it.
func session(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	// A TTL with room for a loaded machine's scheduling delays.
	s, err := concurrency.NewSession(client, concurrency.WithTTL(5))
	check(err, "new session")
	ctx, cancel := timeout()
	defer cancel()
	_, err = client.Put(ctx, "session/key", "v", clientv3.WithLease(s.Lease()))
	check(err, "put with the session's lease")
	time.Sleep(10 * time.Second) // two TTLs: kept alive by the session
	resp, err := client.Get(ctx, "session/key")
	check(err, "get")
	if len(resp.Kvs) != 1 {
		fail("the session's key vanished while the session was refreshed")
	}
	check(s.Close(), "close")
	resp, err = client.Get(ctx, "session/key")
	check(err, "get after close")
	if len(resp.Kvs) != 0 {
		fail("close did not revoke the session's lease")
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		fail("Done() did not close after Close()")
	}
}

// mutex: etcd's ExampleMutex_Lock: a second locker waits until the first unlocks.
func mutex(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	s1, err := concurrency.NewSession(client)
	check(err, "session 1")
	defer s1.Close()
	m1 := concurrency.NewMutex(s1, "/my-lock/")
	s2, err := concurrency.NewSession(client)
	check(err, "session 2")
	defer s2.Close()
	m2 := concurrency.NewMutex(s2, "/my-lock/")
	ctx, cancel := timeout()
	defer cancel()
	check(m1.Lock(ctx), "lock 1")
	locked := make(chan struct{})
	go func() {
		if err := m2.Lock(ctx); err != nil {
			fail("lock 2: %v", err)
		}
		close(locked)
	}()
	select {
	case <-locked:
		fail("the second locker got in while the first held the lock")
	case <-time.After(500 * time.Millisecond):
	}
	check(m1.Unlock(ctx), "unlock 1")
	select {
	case <-locked:
	case <-time.After(30 * time.Second):
		fail("the second locker never got the lock after the first unlocked")
	}
	if m2.Header().Revision <= 0 {
		fail("no header revision on the second lock")
	}
	check(m2.Unlock(ctx), "unlock 2")
}

// election: etcd's ExampleElection_Campaign plus Observe and Resign.
func election(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	s1, err := concurrency.NewSession(client)
	check(err, "session 1")
	defer s1.Close()
	e1 := concurrency.NewElection(s1, "/my-election/")
	s2, err := concurrency.NewSession(client)
	check(err, "session 2")
	defer s2.Close()
	e2 := concurrency.NewElection(s2, "/my-election/")
	ctx, cancel := timeout()
	defer cancel()
	observeCtx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	observed := e1.Observe(observeCtx)
	check(e1.Campaign(ctx, "e1"), "campaign 1")
	elected := make(chan struct{})
	go func() {
		if err := e2.Campaign(ctx, "e2"); err != nil {
			fail("campaign 2: %v", err)
		}
		close(elected)
	}()
	check(e1.Proclaim(ctx, "e1 again"), "proclaim")
	leader, err := e1.Leader(ctx)
	check(err, "leader")
	if string(leader.Kvs[0].Value) != "e1 again" {
		fail("leader value %q, want %q", leader.Kvs[0].Value, "e1 again")
	}
	select {
	case <-elected:
		fail("the second candidate was elected while the first led")
	case <-time.After(500 * time.Millisecond):
	}
	check(e1.Resign(ctx), "resign")
	select {
	case <-elected:
	case <-time.After(30 * time.Second):
		fail("the second candidate was not elected after the first resigned")
	}
	want := []string{"e1", "e1 again", "e2"}
	for _, value := range want {
		select {
		case resp := <-observed:
			if got := string(resp.Kvs[0].Value); got != value {
				fail("observed %q, want %q", got, value)
			}
		case <-time.After(30 * time.Second):
			fail("observe did not deliver %q", value)
		}
	}
	check(e2.Resign(ctx), "resign 2")
}

// stm: etcd's ExampleSTM_apply: transfers between accounts keep the total.
func stm(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	const accounts, start = 5, 100
	for i := 0; i < accounts; i++ {
		_, err := client.Put(ctx, fmt.Sprintf("accts/%d", i), strconv.Itoa(start))
		check(err, "put account")
	}
	exchange := func(stm concurrency.STM) error {
		from, to := time.Now().Nanosecond()%accounts, time.Now().Nanosecond()/7%accounts
		if from == to {
			return nil
		}
		fromKey, toKey := fmt.Sprintf("accts/%d", from), fmt.Sprintf("accts/%d", to)
		fromValue, _ := strconv.Atoi(stm.Get(fromKey))
		toValue, _ := strconv.Atoi(stm.Get(toKey))
		amount := fromValue / 2
		stm.Put(fromKey, strconv.Itoa(fromValue-amount))
		stm.Put(toKey, strconv.Itoa(toValue+amount))
		return nil
	}
	done := make(chan error, 10)
	for i := 0; i < 10; i++ {
		go func() {
			var err error
			for j := 0; j < 10 && err == nil; j++ {
				_, err = concurrency.NewSTM(client, exchange)
			}
			done <- err
		}()
	}
	for i := 0; i < 10; i++ {
		check(<-done, "stm")
	}
	resp, err := client.Get(ctx, "accts/", clientv3.WithPrefix())
	check(err, "get accounts")
	total := 0
	for _, kv := range resp.Kvs {
		value, _ := strconv.Atoi(string(kv.Value))
		total += value
	}
	if total != accounts*start {
		fail("total %d after the transfers, want %d", total, accounts*start)
	}
}

// watch: a watch resumed from a revision sees every later event once, in order.
func watch(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	first, err := client.Put(ctx, "watch/k", "0")
	check(err, "put")
	for i := 1; i <= 9; i++ {
		_, err = client.Put(ctx, "watch/k", strconv.Itoa(i))
		check(err, "put")
	}
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	events := client.Watch(watchCtx, "watch/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision+1), clientv3.WithPrevKV())
	next := 1
	for next <= 9 {
		select {
		case resp := <-events:
			check(resp.Err(), "watch")
			for _, event := range resp.Events {
				if string(event.Kv.Value) != strconv.Itoa(next) || event.PrevKv == nil || string(event.PrevKv.Value) != strconv.Itoa(next-1) {
					fail("event %d: value %q prev %v", next, event.Kv.Value, event.PrevKv)
				}
				next++
			}
		case <-time.After(30 * time.Second):
			fail("watch stalled at event %d", next)
		}
	}
	// A history larger than HTTP/2's flow-control windows and gRPC's default message
	// size: 40 values of 100 KiB, replayed in order, whole, with fragments asked for.
	big := strings.Repeat("v", 100*1024)
	bigFirst, err := client.Put(ctx, "watch/big/0", "0"+big)
	check(err, "put a 100 KiB value")
	for i := 1; i < 40; i++ {
		_, err = client.Put(ctx, "watch/big/"+strconv.Itoa(i), strconv.Itoa(i)+big)
		check(err, "put a 100 KiB value")
	}
	for _, fragment := range []bool{false, true} {
		options := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(bigFirst.Header.Revision)}
		if fragment {
			options = append(options, clientv3.WithFragment())
		}
		bigCtx, bigStop := context.WithCancel(ctx)
		replay := client.Watch(bigCtx, "watch/big/", options...)
		seen := 0
		for seen < 40 {
			select {
			case resp := <-replay:
				check(resp.Err(), "watch a large history")
				for _, event := range resp.Events {
					if string(event.Kv.Key) != "watch/big/"+strconv.Itoa(seen) || string(event.Kv.Value) != strconv.Itoa(seen)+big {
						fail("large history (fragment %v): event %d is %s (%d bytes)", fragment, seen, event.Kv.Key, len(event.Kv.Value))
					}
					seen++
				}
			case <-time.After(30 * time.Second):
				fail("a watch of a 4 MB history (fragment %v) stalled at event %d", fragment, seen)
			}
		}
		bigStop()
	}
	_, err = client.Compact(ctx, first.Header.Revision+5)
	check(err, "compact")
	compacted := client.Watch(ctx, "watch/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
	select {
	case resp := <-compacted:
		if resp.Err() == nil || resp.CompactRevision != first.Header.Revision+5 {
			fail("a watch from a compacted revision answered err=%v compact=%d", resp.Err(), resp.CompactRevision)
		}
	case <-time.After(30 * time.Second):
		fail("a watch from a compacted revision got no answer")
	}
}

// lease: an unrefreshed lease expires and takes its keys; TimeToLive says so.
func lease(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	// 6 s: room for a loaded machine between the grant and the TimeToLive (with 3 s,
	// one CI run under full-suite load found the lease already expired).
	granted, err := client.Grant(ctx, 6)
	check(err, "grant")
	_, err = client.Put(ctx, "lease/k", "v", clientv3.WithLease(granted.ID))
	check(err, "put")
	live, err := client.TimeToLive(ctx, granted.ID, clientv3.WithAttachedKeys())
	check(err, "time to live")
	if live.GrantedTTL != 6 || len(live.Keys) != 1 {
		fail("time to live: granted %d keys %d", live.GrantedTTL, len(live.Keys))
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := client.Get(ctx, "lease/k")
		check(err, "get")
		if len(resp.Kvs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			fail("the key of an expired lease is still there")
		}
		time.Sleep(50 * time.Millisecond)
	}
	gone, err := client.TimeToLive(ctx, granted.ID)
	check(err, "time to live after expiry")
	if gone.TTL != -1 {
		fail("time to live of an expired lease: %d, want -1", gone.TTL)
	}
	if _, err = client.Revoke(ctx, granted.ID); err == nil {
		fail("revoking an expired lease succeeded")
	}
}

// expectStatus fails unless err is the gRPC status code and message.
func expectStatus(err error, code codes.Code, message, what string) {
	if err == nil {
		fail("%s succeeded", what)
	}
	s, _ := status.FromError(err)
	if s.Code() != code || s.Message() != message {
		fail("%s: %v %q, want %v %q", what, s.Code(), s.Message(), code, message)
	}
}

// grantedTTL is the granted TTL of lease, and whether it is still alive.
func grantedTTL(ctx context.Context, client *clientv3.Client, lease int64) (int64, bool) {
	live, err := client.TimeToLive(ctx, clientv3.LeaseID(lease))
	check(err, "time to live")
	return live.GrantedTTL, live.TTL > 0
}

// waitForKey polls until key is there (present) or gone, failing after 30 s.
func waitForKey(ctx context.Context, client *clientv3.Client, key string, present bool, what string) {
	for stop := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := client.Get(ctx, key)
		check(err, "get "+key)
		if (len(resp.Kvs) == 1) == present {
			return
		}
		if time.Now().After(stop) {
			fail("%s (%s)", what, key)
		}
	}
}

// twoLeases grants two leases of 30 s for a scenario (nothing refreshes them).
func twoLeases(ctx context.Context, client *clientv3.Client) (clientv3.LeaseID, clientv3.LeaseID) {
	l1, err := client.Grant(ctx, 30)
	check(err, "grant 1")
	l2, err := client.Grant(ctx, 30)
	check(err, "grant 2")
	return l1.ID, l2.ID
}

// v3lock: etcd's server-side Lock service (v3lockpb): the lock key is name/<lease
// hex>, a second locker waits for the first to unlock, the key goes with its lease,
// an unknown lease is refused with etcd's error, lease 0 gets a 60 s lease of the
// server's own, and unlocking a missing key succeeds.
func v3lock(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	locks := v3lockpb.NewLockClient(client.ActiveConnection())
	l1, l2 := twoLeases(ctx, client)
	first, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("/svc-lock"), Lease: int64(l1)})
	check(err, "lock 1")
	if want := fmt.Sprintf("/svc-lock/%x", int64(l1)); string(first.Key) != want {
		fail("lock 1 key %q, want %q", first.Key, want)
	}
	if first.Header == nil || first.Header.Revision == 0 {
		fail("lock 1 has no header revision")
	}
	got := make(chan *v3lockpb.LockResponse, 1)
	go func() {
		second, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("/svc-lock"), Lease: int64(l2)})
		if err != nil {
			fail("lock 2: %v", err)
		}
		got <- second
	}()
	select {
	case <-got:
		fail("the second locker got in while the first held the lock")
	case <-time.After(500 * time.Millisecond):
	}
	// A waiter whose call is cancelled leaves the queue: its key is removed.
	l3, err := client.Grant(ctx, 30)
	check(err, "grant 3")
	waiterKey := fmt.Sprintf("/svc-lock/%x", int64(l3.ID))
	waitCtx, stopWaiting := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		_, err := locks.Lock(waitCtx, &v3lockpb.LockRequest{Name: []byte("/svc-lock"), Lease: int64(l3.ID)})
		waited <- err
	}()
	waitForKey(ctx, client, waiterKey, true, "the third locker's key never appeared")
	stopWaiting()
	if err := <-waited; status.Code(err) != codes.Canceled {
		fail("a cancelled lock call ended with %v, want Canceled", err)
	}
	waitForKey(ctx, client, waiterKey, false, "a cancelled waiter's key is still queued")
	_, err = client.Revoke(ctx, l3.ID)
	check(err, "revoke 3")
	unlocked, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: first.Key})
	check(err, "unlock 1")
	var second *v3lockpb.LockResponse
	select {
	case second = <-got:
	case <-time.After(30 * time.Second):
		fail("the second locker never got the lock after the first unlocked")
	}
	if want := fmt.Sprintf("/svc-lock/%x", int64(l2)); string(second.Key) != want {
		fail("lock 2 key %q, want %q", second.Key, want)
	}
	if second.Header.Revision < unlocked.Header.Revision {
		fail("lock 2 at revision %d, before the unlock at %d", second.Header.Revision, unlocked.Header.Revision)
	}
	// The key goes with its lease.
	_, err = client.Revoke(ctx, l2)
	check(err, "revoke 2")
	held, err := client.Get(ctx, string(second.Key))
	check(err, "get lock 2")
	if len(held.Kvs) != 0 {
		fail("the lock key outlived its lease")
	}
	_, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("/svc-lock"), Lease: 0x7123456789})
	expectStatus(err, codes.Unknown, "etcdserver: requested lease not found", "lock with an unknown lease")
	own, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("/svc-lock-2")})
	check(err, "lock without a lease")
	held, err = client.Get(ctx, string(own.Key))
	check(err, "get the lock without a lease")
	if len(held.Kvs) != 1 || held.Kvs[0].Lease == 0 || string(own.Key) != fmt.Sprintf("/svc-lock-2/%x", held.Kvs[0].Lease) {
		fail("lock without a lease: key %q, kvs %v", own.Key, held.Kvs)
	}
	if ttl, alive := grantedTTL(ctx, client, held.Kvs[0].Lease); ttl != 60 || !alive {
		fail("the lease of a lock without one: granted TTL %d, alive %v; want 60, true", ttl, alive)
	}
	_, err = locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: own.Key})
	check(err, "unlock the lock without a lease")
	_, err = client.Revoke(ctx, clientv3.LeaseID(held.Kvs[0].Lease))
	check(err, "revoke the server's lease")
	missing, err := locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: []byte("/svc-lock/none")})
	check(err, "unlock a missing key")
	if missing.Header == nil || missing.Header.Revision == 0 {
		fail("unlocking a missing key: no header revision")
	}
	_, err = client.Revoke(ctx, l1)
	check(err, "revoke 1")
}

// v3election: etcd's server-side Election service (v3electionpb): campaign, leader,
// observe, proclaim, resign and the next candidate elected, and etcd's errors.
func v3election(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	elections := v3electionpb.NewElectionClient(client.ActiveConnection())
	l1, l2 := twoLeases(ctx, client)
	name := []byte("/svc-election")
	_, err := elections.Leader(ctx, &v3electionpb.LeaderRequest{Name: name})
	expectStatus(err, codes.Unknown, "election: no leader", "leader before any campaign")
	c1, err := elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Value: []byte("a"), Lease: int64(l1)})
	check(err, "campaign 1")
	leader1 := c1.Leader
	if string(leader1.Name) != string(name) || string(leader1.Key) != fmt.Sprintf("/svc-election/%x", int64(l1)) ||
		leader1.Lease != int64(l1) || leader1.Rev == 0 || c1.Header.Revision < leader1.Rev {
		fail("campaign 1: leader %v, header %v", leader1, c1.Header)
	}
	observeCtx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	observer, err := elections.Observe(observeCtx, &v3electionpb.LeaderRequest{Name: name})
	check(err, "observe")
	next := func(want string) {
		resp, err := observer.Recv()
		check(err, "observe "+want)
		if string(resp.Kv.Value) != want {
			fail("observed %q, want %q", resp.Kv.Value, want)
		}
	}
	next("a")
	_, err = elections.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: leader1, Value: []byte("a2")})
	check(err, "proclaim")
	next("a2")
	lead, err := elections.Leader(ctx, &v3electionpb.LeaderRequest{Name: name})
	check(err, "leader")
	if string(lead.Kv.Value) != "a2" || string(lead.Kv.Key) != string(leader1.Key) || lead.Kv.CreateRevision != leader1.Rev {
		fail("leader %v, want %q at %q created %d", lead.Kv, "a2", leader1.Key, leader1.Rev)
	}
	elected := make(chan *v3electionpb.CampaignResponse, 1)
	go func() {
		c2, err := elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: name, Value: []byte("b"), Lease: int64(l2)})
		if err != nil {
			fail("campaign 2: %v", err)
		}
		elected <- c2
	}()
	select {
	case <-elected:
		fail("the second candidate was elected while the first led")
	case <-time.After(500 * time.Millisecond):
	}
	_, err = elections.Resign(ctx, &v3electionpb.ResignRequest{Leader: leader1})
	check(err, "resign 1")
	select {
	case c2 := <-elected:
		if string(c2.Leader.Key) != fmt.Sprintf("/svc-election/%x", int64(l2)) {
			fail("campaign 2 key %q", c2.Leader.Key)
		}
	case <-time.After(30 * time.Second):
		fail("the second candidate was not elected after the first resigned")
	}
	next("b")
	_, err = elections.Proclaim(ctx, &v3electionpb.ProclaimRequest{Leader: leader1, Value: []byte("late")})
	expectStatus(err, codes.Unknown, "election: not leader", "proclaim by a leader that resigned")
	_, err = elections.Resign(ctx, &v3electionpb.ResignRequest{Leader: leader1})
	check(err, "resign again")
	_, err = elections.Proclaim(ctx, &v3electionpb.ProclaimRequest{Value: []byte("x")})
	expectStatus(err, codes.Unknown, "\"leader\" field must be provided", "proclaim without a leader")
	_, err = elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("/svc-election-2"), Value: []byte("c"), Lease: 0x7123456789})
	expectStatus(err, codes.Unknown, "etcdserver: requested lease not found", "campaign with an unknown lease")
	c3, err := elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("/svc-election-3"), Value: []byte("d")})
	check(err, "campaign without a lease")
	if c3.Leader.Lease == 0 || string(c3.Leader.Key) != fmt.Sprintf("/svc-election-3/%x", c3.Leader.Lease) {
		fail("campaign without a lease: leader %v", c3.Leader)
	}
	if ttl, alive := grantedTTL(ctx, client, c3.Leader.Lease); ttl != 60 || !alive {
		fail("the lease of a campaign without one: granted TTL %d, alive %v; want 60, true", ttl, alive)
	}
	_, err = elections.Resign(ctx, &v3electionpb.ResignRequest{Leader: c3.Leader})
	check(err, "resign 3")
	_, err = client.Revoke(ctx, clientv3.LeaseID(c3.Leader.Lease))
	check(err, "revoke the server's lease")
	_, err = client.Revoke(ctx, l1)
	check(err, "revoke 1")
	_, err = client.Revoke(ctx, l2)
	check(err, "revoke 2")
}

// rawUnary sends one gRPC call over plain HTTP/2 (x/net/http2, no gRPC client: nothing
// cancels the call but the server) with the grpc-timeout header, and returns the
// grpc-status, grpc-message and how long the answer took.
func rawUnary(endpoint, path string, request []byte, timeout string) (string, string, time.Duration) {
	return rawCall(endpoint, path, request, timeout, false, 0)
}

// rawStream: the same for a streaming method: sends one message and keeps its side of
// the stream open, then reads until the server ends the stream (or `limit` passes: then
// it gives up and reports status "none").
func rawStream(endpoint, path string, request []byte, timeout string, limit time.Duration) (string, string, time.Duration) {
	return rawCall(endpoint, path, request, timeout, true, limit)
}

func rawCall(endpoint, path string, request []byte, timeout string, keepOpen bool, limit time.Duration) (string, string, time.Duration) {
	transport := &http2.Transport{AllowHTTP: true, DialTLS: func(network, addr string, _ *tls.Config) (net.Conn, error) {
		return net.Dial(network, addr)
	}}
	framed := make([]byte, 5+len(request))
	binary.BigEndian.PutUint32(framed[1:5], uint32(len(request)))
	copy(framed[5:], request)
	var body io.Reader = bytes.NewReader(framed)
	if keepOpen {
		reader, writer := io.Pipe()
		defer writer.Close()
		go writer.Write(framed)
		body = reader
	}
	url := "http://" + strings.TrimPrefix(endpoint, "http://") + path
	req, err := http.NewRequest("POST", url, body)
	check(err, "request "+path)
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	req.Header.Set("grpc-timeout", timeout)
	started := time.Now()
	resp, err := transport.RoundTrip(req)
	check(err, "round trip "+path)
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(resp.Body)
		done <- err
	}()
	if keepOpen {
		select {
		case err = <-done:
		case <-time.After(limit):
			resp.Body.Close()
			return "none", "", time.Since(started)
		}
	} else {
		err = <-done
	}
	check(err, "read "+path)
	resp.Body.Close()
	elapsed := time.Since(started)
	// A trailers-only answer carries the status in its headers.
	field := func(name string) string {
		if value := resp.Trailer.Get(name); value != "" {
			return value
		}
		return resp.Header.Get(name)
	}
	return field("grpc-status"), field("grpc-message"), elapsed
}

// deadline: a call whose grpc-timeout passes while it waits (a Lock behind a holder) is
// ended by the server with "context deadline exceeded", and its waiter's key is
// removed; a call that finishes in time answers normally; a watch stream ends at its
// grpc-timeout.
func deadline(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	locks := v3lockpb.NewLockClient(client.ActiveConnection())
	l1, l2 := twoLeases(ctx, client)
	held, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("/deadline-lock"), Lease: int64(l1)})
	check(err, "lock 1")
	request, err := (&v3lockpb.LockRequest{Name: []byte("/deadline-lock"), Lease: int64(l2)}).Marshal()
	check(err, "marshal")
	code, message, elapsed := rawUnary(endpoint, "/v3lockpb.Lock/Lock", request, "500m")
	// Unknown (2), not DEADLINE_EXCEEDED: etcd's Lock service answers with its embedded
	// client's error.
	if code != "2" || message != "context deadline exceeded" {
		fail("a lock past its grpc-timeout: grpc-status %q, grpc-message %q; want 2, context deadline exceeded", code, message)
	}
	if elapsed < 400*time.Millisecond || elapsed > 20*time.Second {
		fail("a lock with grpc-timeout 500m answered after %v", elapsed)
	}
	waiter := fmt.Sprintf("/deadline-lock/%x", int64(l2))
	waitForKey(ctx, client, waiter, false, "the waiter's key outlived its call's deadline")
	// The same for a Campaign behind a leader.
	elections := v3electionpb.NewElectionClient(client.ActiveConnection())
	leader, err := elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("/deadline-election"), Value: []byte("a"), Lease: int64(l1)})
	check(err, "campaign 1")
	campaign, err := (&v3electionpb.CampaignRequest{Name: []byte("/deadline-election"), Value: []byte("b"), Lease: int64(l2)}).Marshal()
	check(err, "marshal campaign")
	code, message, elapsed = rawUnary(endpoint, "/v3electionpb.Election/Campaign", campaign, "500m")
	if code != "2" || message != "context deadline exceeded" || elapsed < 400*time.Millisecond {
		fail("a campaign past its grpc-timeout: grpc-status %q, grpc-message %q after %v; want 2, context deadline exceeded", code, message, elapsed)
	}
	candidate := fmt.Sprintf("/deadline-election/%x", int64(l2))
	waitForKey(ctx, client, candidate, false, "the candidate's key outlived its call's deadline")
	_, err = elections.Resign(ctx, &v3electionpb.ResignRequest{Leader: leader.Leader})
	check(err, "resign")
	rangeRequest, err := (&pb.RangeRequest{Key: []byte("/deadline-lock/"), RangeEnd: []byte("/deadline-lock0")}).Marshal()
	check(err, "marshal range")
	if code, message, _ := rawUnary(endpoint, "/etcdserverpb.KV/Range", rangeRequest, "5S"); code != "0" {
		fail("a range within its grpc-timeout: grpc-status %q %q", code, message)
	}
	// A watch stream is ended at its grpc-timeout too.
	watchRequest, err := (&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("/deadline-watch")}}}).Marshal()
	check(err, "marshal watch")
	code, message, elapsed = rawStream(endpoint, "/etcdserverpb.Watch/Watch", watchRequest, "500m", 15*time.Second)
	// etcd answers Unknown (its watch server returns its context's error as it is) or,
	// about one time in eight here, DEADLINE_EXCEEDED (grpc-go's own end of the call
	// gets there first): either is etcd's answer.
	if (code != "2" && code != "4") || message != "context deadline exceeded" || elapsed < 400*time.Millisecond {
		fail("a watch stream past its grpc-timeout: grpc-status %q, grpc-message %q after %v; want 2 or 4, context deadline exceeded", code, message, elapsed)
	}
	_, err = locks.Unlock(ctx, &v3lockpb.UnlockRequest{Key: held.Key})
	check(err, "unlock")
	_, err = client.Revoke(ctx, l1)
	check(err, "revoke 1")
	_, err = client.Revoke(ctx, l2)
	check(err, "revoke 2")
}

// hold: n holds of one mutex, each logged, for the multi-process exclusion check.
func hold(endpoint, name string, n int, logPath string) {
	client := connect(endpoint)
	defer client.Close()
	s, err := concurrency.NewSession(client, concurrency.WithTTL(10))
	check(err, "session")
	defer s.Close()
	m := concurrency.NewMutex(s, name)
	log, err := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	check(err, "open log")
	defer log.Close()
	// A deadline per hold, not for all of them: on a busy machine four processes
	// taking turns n times each can take longer than one deadline, and the check is
	// about exclusion, not speed.
	for i := 0; i < n; i++ {
		ctx, cancel := timeout()
		check(m.Lock(ctx), "lock")
		fmt.Fprintf(log, "in %d %d\n", os.Getpid(), m.Header().Revision)
		time.Sleep(10 * time.Millisecond)
		fmt.Fprintf(log, "out %d\n", os.Getpid())
		check(m.Unlock(ctx), "unlock")
		cancel()
	}
}

// connectionEvents counts what the client's gRPC transport does under load.
type connectionEvents struct {
	rpcs, attempts, ends int64
}

func (c *connectionEvents) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (c *connectionEvents) HandleRPC(_ context.Context, s stats.RPCStats) {
	switch s.(type) {
	case *stats.Begin:
		atomic.AddInt64(&c.rpcs, 1)
	case *stats.OutHeader:
		atomic.AddInt64(&c.attempts, 1)
	}
}
func (c *connectionEvents) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c *connectionEvents) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		atomic.AddInt64(&c.ends, 1)
	}
}

// busy: clients under load (grpc-go pings for bandwidth estimation after every
// burst of data it receives, hundreds of times a second) keep their connections,
// and each of their puts is applied exactly once: 4 clients, 4 goroutines each,
// 4,000 puts of distinct keys, as the load test's put workload.
func busy(endpoint string) {
	const clients, workers, each = 4, 4, 250
	events := &connectionEvents{}
	var all []*clientv3.Client
	for c := 0; c < clients; c++ {
		client, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 20 * time.Second,
			DialOptions: []grpc.DialOption{grpc.WithStatsHandler(events)}})
		check(err, "connect")
		defer client.Close()
		all = append(all, client)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	start, err := all[0].Get(ctx, "busy/")
	check(err, "get the start revision")
	var wg sync.WaitGroup
	failures := make(chan error, clients*workers)
	for c := 0; c < clients; c++ {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(client *clientv3.Client, worker int) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					if _, err := client.Put(ctx, fmt.Sprintf("busy/%02d/%03d", worker, i), "v"); err != nil {
						failures <- err
						return
					}
				}
			}(all[c], c*workers+w)
		}
	}
	wg.Wait()
	close(failures)
	for err := range failures {
		fail("a put failed: %v", err)
	}
	if ends := atomic.LoadInt64(&events.ends); ends != 0 {
		fail("the server ended the clients' connections %d time(s) under load", ends)
	}
	if rpcs, attempts := atomic.LoadInt64(&events.rpcs), atomic.LoadInt64(&events.attempts); attempts != rpcs {
		fail("gRPC sent %d request(s) for %d calls: the server made it re-send some", attempts, rpcs)
	}
	keys, err := all[0].Get(ctx, "busy/", clientv3.WithPrefix())
	check(err, "read the keys back")
	if len(keys.Kvs) != clients*workers*each {
		fail("%d keys, want %d", len(keys.Kvs), clients*workers*each)
	}
	for _, kv := range keys.Kvs {
		if kv.Version != 1 {
			fail("%s has version %d: a put was applied %d times", kv.Key, kv.Version, kv.Version)
		}
	}
	if got, want := keys.Header.Revision-start.Header.Revision, int64(clients*workers*each); got != want {
		fail("the revision advanced by %d for %d puts", got, want)
	}
}

// rawWatch opens an etcdserverpb Watch stream on conn (no clientv3 retries), creates
// one watch on it and checks that the first response says created.
func rawWatch(ctx context.Context, conn *grpc.ClientConn, create *pb.WatchCreateRequest) pb.Watch_WatchClient {
	watch, err := pb.NewWatchClient(conn).Watch(ctx)
	check(err, "open a watch stream")
	check(watch.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: create}}), "create a watch")
	created, err := watch.Recv()
	check(err, "the watch's created response")
	if !created.Created {
		fail("the first watch response is not created: %v", created)
	}
	return watch
}

// slowwatch: a watch stream whose client does not read while 48 MiB of events pile
// up is reset with INTERNAL_ERROR (clientv3 retries that and resumes) instead of
// being buffered without bound; the server keeps serving.
func slowwatch(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	conn := client.ActiveConnection()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	watch := rawWatch(ctx, conn, &pb.WatchCreateRequest{Key: []byte("slow/"), RangeEnd: []byte("slow0")})
	value := strings.Repeat("s", 1<<20)
	for i := 0; i < 48; i++ {
		_, err := client.Put(ctx, "slow/"+strconv.Itoa(i), value)
		check(err, "put a 1 MiB value")
	}
	received := 0
	for {
		resp, err := watch.Recv()
		if err != nil {
			if code := status.Code(err); code != codes.Internal && code != codes.Unavailable {
				fail("the unread watch stream ended with %v, want Internal (a reset) or Unavailable", err)
			}
			break
		}
		received += len(resp.Events)
		if received >= 48 {
			fail("all 48 MiB of events were buffered for a client that did not read")
		}
	}
	if _, err := client.Put(ctx, "after-slow", "ok"); err != nil {
		fail("the server stopped serving after a slow watcher: %v", err)
	}
	// A watch that starts in the past catches up in responses under the request
	// limit, split between revisions: a raw stream (gRPC's 4 MiB receive limit) gets
	// all 8 MiB of events, none refused as too large.
	var first int64
	for i := 0; i < 8; i++ {
		resp, err := client.Put(ctx, "catchup/"+strconv.Itoa(i), value)
		check(err, "put a 1 MiB value")
		if i == 0 {
			first = resp.Header.Revision
		}
	}
	catchup := rawWatch(ctx, conn, &pb.WatchCreateRequest{Key: []byte("catchup/"), RangeEnd: []byte("catchup0"), StartRevision: first})
	for got := 0; got < 8; {
		resp, err := catchup.Recv()
		check(err, "a catching-up watch")
		for _, event := range resp.Events {
			if want := first + int64(got); event.Kv.ModRevision != want {
				fail("catching up: revision %d, want %d", event.Kv.ModRevision, want)
			}
			got++
		}
	}
}

// streamend: how the server ends long-lived streams and waiting calls, seen without
// clientv3's retries: raw Watch, LeaseKeepAlive and Observe streams, a Lock and a
// Campaign waiting behind <lease>'s, on one connection.
func streamend(endpoint string, lease int64) {
	client := connect(endpoint)
	defer client.Close()
	conn := client.ActiveConnection()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	watch := rawWatch(ctx, conn, &pb.WatchCreateRequest{Key: []byte("streamend")})
	keepAlive, err := pb.NewLeaseClient(conn).LeaseKeepAlive(ctx)
	check(err, "open a keep-alive stream")
	check(keepAlive.Send(&pb.LeaseKeepAliveRequest{ID: lease}), "send a keep-alive")
	refreshed, err := keepAlive.Recv()
	check(err, "the keep-alive's response")
	if refreshed.TTL <= 0 {
		fail("lease %x is not alive: %v", lease, refreshed)
	}
	// A held lock and election on <lease>, and a second lease's calls waiting behind
	// them, with an Observe of the election open.
	second, err := client.Grant(ctx, 300)
	check(err, "grant a second lease")
	locks := v3lockpb.NewLockClient(conn)
	_, err = locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("streamend-lock"), Lease: lease})
	check(err, "take the lock")
	elections := v3electionpb.NewElectionClient(conn)
	_, err = elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("streamend-election"), Lease: lease, Value: []byte("first")})
	check(err, "win the election")
	observe, err := elections.Observe(ctx, &v3electionpb.LeaderRequest{Name: []byte("streamend-election")})
	check(err, "observe the election")
	_, err = observe.Recv()
	check(err, "the observed leader")
	ended := make(chan string, 5)
	ending := func(what string, err error) string {
		s, _ := status.FromError(err)
		return fmt.Sprintf("%s ended %v: %s", what, s.Code(), s.Message())
	}
	go func() {
		_, err := locks.Lock(ctx, &v3lockpb.LockRequest{Name: []byte("streamend-lock"), Lease: int64(second.ID)})
		ended <- ending("lock", err)
	}()
	go func() {
		_, err := elections.Campaign(ctx, &v3electionpb.CampaignRequest{Name: []byte("streamend-election"), Lease: int64(second.ID), Value: []byte("second")})
		ended <- ending("campaign", err)
	}()
	go func() {
		for {
			if _, err := observe.Recv(); err != nil {
				ended <- ending("observe", err)
				return
			}
		}
	}()
	// Streaming once both waiters are in line (their keys are in the store).
	for _, prefix := range []string{"streamend-lock/", "streamend-election/"} {
		for {
			waiting, err := client.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
			check(err, "count the waiters of "+prefix)
			if waiting.Count == 2 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	fmt.Println("streaming")
	go func() {
		for {
			if _, err := watch.Recv(); err != nil {
				s, _ := status.FromError(err)
				ended <- fmt.Sprintf("watch ended %v: %s", s.Code(), s.Message())
				return
			}
		}
	}()
	go func() {
		for {
			if _, err := keepAlive.Recv(); err != nil {
				s, _ := status.FromError(err)
				ended <- fmt.Sprintf("keepalive ended %v: %s", s.Code(), s.Message())
				return
			}
		}
	}()
	var lines []string
	for len(lines) < 5 {
		lines = append(lines, <-ended)
	}
	sort.Strings(lines)
	for _, line := range lines {
		fmt.Println(line)
	}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: clientcheck <endpoint> all|session|mutex|election|stm|watch|lease|badinput|slowwatch|hold <name> <n> <log>")
		os.Exit(2)
	}
	endpoint := os.Args[1]
	scenarios := map[string]func(string){"session": session, "mutex": mutex, "election": election, "stm": stm, "watch": watch, "lease": lease, "badinput": badinput, "busy": busy, "slowwatch": slowwatch, "v3lock": v3lock, "v3election": v3election, "deadline": deadline, "watchapi": watchapi, "watchfragment": watchfragment, "idle": idle}
	order := []string{"session", "mutex", "election", "stm", "watch", "lease", "badinput", "slowwatch"}
	switch os.Args[2] {
	case "all":
		for _, name := range order {
			scenarios[name](endpoint)
			fmt.Println("ok", name)
		}
	case "streamend":
		lease, err := strconv.ParseInt(os.Args[3], 10, 64)
		check(err, "the lease ID")
		streamend(endpoint, lease)
		fmt.Println("ok streamend")
	case "resume":
		resumeMain(endpoint, os.Args[3:])
		fmt.Println("ok resume")
	case "hold":
		n, _ := strconv.Atoi(os.Args[4])
		hold(endpoint, os.Args[3], n, os.Args[5])
		fmt.Println("ok hold")
	default:
		scenario, found := scenarios[os.Args[2]]
		if !found {
			fail("unknown scenario %s", os.Args[2])
		}
		scenario(endpoint)
		fmt.Println("ok", os.Args[2])
	}
}
