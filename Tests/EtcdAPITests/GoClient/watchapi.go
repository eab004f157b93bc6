package main

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	pb "go.etcd.io/etcd/etcdserver/etcdserverpb"
	"go.etcd.io/etcd/mvcc/mvccpb"
)

// watchapi drives the Watch stream's requests raw (etcd's generated client, no
// clientv3 watcher in between) and prints every response in one normalized form,
// revisions relative to the store's at the start: the test compares what etcd 3.4
// and coordproxy print. Caller-chosen watch IDs (and a duplicate), filters,
// prev_kv, a watch of history from a start revision, a cancel, a progress request,
// and a watch cancelled while its events keep coming on another watch of the stream.
func watchapi(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	start, err := client.Get(ctx, "wa/")
	check(err, "read the start revision")
	base := start.Header.Revision
	stream, err := pb.NewWatchClient(client.ActiveConnection()).Watch(ctx)
	check(err, "open a raw watch stream")
	responses := make(chan *pb.WatchResponse, 100)
	go func() {
		for {
			response, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- response
		}
	}()
	// n responses, sorted by watch ID then revision (watchers of one stream may be
	// answered in either order for one revision), printed; then none more for a while.
	expect := func(step string, n int) {
		var got []*pb.WatchResponse
		deadline := time.After(20 * time.Second)
		for len(got) < n {
			select {
			case response, open := <-responses:
				if !open {
					fail("%s: the stream ended after %d of %d responses", step, len(got), n)
				}
				got = append(got, response)
			case <-deadline:
				fail("%s: %d of %d responses within 20 s", step, len(got), n)
			}
		}
		select {
		case extra := <-responses:
			fail("%s: a response more than the %d expected: %v", step, n, extra)
		case <-time.After(300 * time.Millisecond):
		}
		sort.SliceStable(got, func(i, j int) bool {
			if got[i].WatchId != got[j].WatchId {
				return got[i].WatchId < got[j].WatchId
			}
			return got[i].Header.Revision < got[j].Header.Revision
		})
		for _, response := range got {
			fmt.Printf("%s: %s\n", step, describeWatchResponse(response, base))
		}
	}
	send := func(request *pb.WatchRequest) {
		check(stream.Send(request), "send a watch request")
	}
	create := func(request *pb.WatchCreateRequest) {
		send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: request}})
	}
	put := func(key, value string) {
		_, err := client.Put(ctx, key, value)
		check(err, "put "+key)
	}
	del := func(key string) {
		_, err := client.Delete(ctx, key)
		check(err, "delete "+key)
	}

	create(&pb.WatchCreateRequest{Key: []byte("wa/"), RangeEnd: []byte("wa0"), WatchId: 7, PrevKv: true, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NODELETE}})
	expect("create id 7, no deletes, prev_kv", 1)
	create(&pb.WatchCreateRequest{Key: []byte("wa/x"), WatchId: 7})
	expect("create id 7 again", 1)
	create(&pb.WatchCreateRequest{Key: []byte("wa/"), RangeEnd: []byte("wa0"), Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}})
	expect("create, id chosen by the server, no puts", 1)
	put("wa/a", "1")
	expect("put wa/a", 1)
	put("wa/a", "2")
	expect("put wa/a again", 1)
	del("wa/a")
	expect("delete wa/a", 1)
	put("outside", "x")
	send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
	expect("progress request", 1)
	send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}})
	expect("cancel id 7", 1)
	put("wa/b", "3")
	del("wa/b")
	expect("put and delete wa/b after the cancel", 1)
	send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: 7}}})
	put("wa/c", "4")
	del("wa/c")
	expect("cancel id 7 again, then put and delete wa/c", 1)
	create(&pb.WatchCreateRequest{Key: []byte("wa/a"), StartRevision: base + 1, PrevKv: true, WatchId: 20})
	expect("history of wa/a from the first put", 2)
	create(&pb.WatchCreateRequest{Key: []byte("wa/"), RangeEnd: []byte("wa0"), StartRevision: base + 100, WatchId: 21})
	expect("a start revision in the future", 1)
	// Only the history watch sees it: the others filter puts, were cancelled, or wait
	// for their start revision.
	put("wa/a", "5")
	expect("put wa/a after its history", 1)
	check(stream.CloseSend(), "close the stream")
}

func describeWatchResponse(response *pb.WatchResponse, base int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "id=%d rev=+%d", response.WatchId, response.Header.Revision-base)
	if response.Created {
		b.WriteString(" created")
	}
	if response.Canceled {
		fmt.Fprintf(&b, " canceled reason=%q", response.CancelReason)
	}
	if response.CompactRevision != 0 {
		fmt.Fprintf(&b, " compact=%d", response.CompactRevision)
	}
	if response.Fragment {
		b.WriteString(" fragment")
	}
	for _, event := range response.Events {
		fmt.Fprintf(&b, " [%s %s=%q v%d create+%d mod+%d", event.Type, event.Kv.Key, event.Kv.Value, event.Kv.Version,
			relative(event.Kv.CreateRevision, base), relative(event.Kv.ModRevision, base))
		if event.PrevKv != nil {
			fmt.Fprintf(&b, " prev=%q", event.PrevKv.Value)
		}
		b.WriteString("]")
	}
	return b.String()
}

func relative(revision, base int64) int64 {
	if revision == 0 {
		return 0
	}
	return revision - base
}

// watchfragment deletes 30 keys of 100 KiB in one revision (3 MiB of events with
// their previous values, over etcd's 2 MiB fragment size: its 1.5 MiB request limit
// and 512 KiB of gRPC headroom) under a watch that asked for fragments, and one that
// did not, and prints what each received: the fragmented
// one gets the revision in several responses, every one but the last flagged, whose
// events put together are the revision's; the other gets it whole.
func watchfragment(endpoint string) {
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	value := strings.Repeat("v", 100*1024)
	const keyCount = 30
	for i := 0; i < keyCount; i++ {
		_, err := client.Put(ctx, fmt.Sprintf("wf/%02d", i), value)
		check(err, "put a 100 KiB value")
	}
	for _, fragment := range []bool{true, false} {
		stream, err := pb.NewWatchClient(client.ActiveConnection()).Watch(ctx)
		check(err, "open a raw watch stream")
		check(stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: []byte("wf/"), RangeEnd: []byte("wf0"), PrevKv: true, Fragment: fragment}}}), "create the watch")
		created, err := stream.Recv()
		check(err, "the created response")
		if !created.Created {
			fail("the first response did not say created: %v", created)
		}
		if fragment {
			_, err = client.Delete(ctx, "wf/", clientv3.WithPrefix())
			check(err, "delete the keys in one revision")
		} else {
			// The same revision again, from history, for the watch without fragments.
			check(stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
				Key: []byte("wf/"), RangeEnd: []byte("wf0"), PrevKv: true, StartRevision: deletedAt}}}), "watch the deletion's revision")
			again, err := stream.Recv()
			check(err, "the second created response")
			if !again.Created {
				fail("no created response for the history watch: %v", again)
			}
		}
		var responses, flagged, events int
		var keys []string
		revisions := map[int64]bool{}
		for events < keyCount {
			response, err := stream.Recv()
			check(err, "receive the deletion's events")
			responses++
			if response.Fragment {
				flagged++
			}
			for _, event := range response.Events {
				events++
				keys = append(keys, string(event.Kv.Key))
				revisions[event.Kv.ModRevision] = true
				if event.Type != mvccpb.DELETE || event.PrevKv == nil || len(event.PrevKv.Value) != len(value) {
					fail("an event of the deletion is not a delete with its 100 KiB previous value")
				}
				deletedAt = event.Kv.ModRevision
			}
		}
		fmt.Printf("fragment=%v: %d response(s), all but the last flagged %v, every event of one revision in key order %v\n",
			fragment, responses, flagged == responses-1, events == keyCount && len(revisions) == 1 && sort.StringsAreSorted(keys))
		check(stream.CloseSend(), "close the stream")
	}
}

// deletedAt is the revision of watchfragment's deletion, watched again from history.
var deletedAt int64
