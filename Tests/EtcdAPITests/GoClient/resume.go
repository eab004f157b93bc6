package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// resume: clientv3's watch of "resume/" from the current revision, across a restart of
// the server it watches through: it prints "watching" once the watch is created,
// then expects <n> puts (made by the test, some while the server is down) as events
// of consecutive revisions, each once, and prints "ok resume".
func resume(endpoint string, n int) {
	// Failures on stdout too: the test reads only stdout.
	fail := func(format string, args ...interface{}) {
		fmt.Printf("FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
	client := connect(endpoint)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	start, err := client.Get(ctx, "resume/")
	check(err, "read the start revision")
	watch := client.Watch(ctx, "resume/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1), clientv3.WithCreatedNotify())
	created := <-watch
	if !created.Created {
		fail("the first watch response is not the created notification: %v", created)
	}
	fmt.Println("watching")
	next := start.Header.Revision + 1
	for got := 0; got < n; {
		response, open := <-watch
		if !open {
			fail("the watch ended after %d of %d events: %v", got, n, ctx.Err())
		}
		if err := response.Err(); err != nil {
			fail("the watch failed after %d of %d events: %v", got, n, err)
		}
		for _, event := range response.Events {
			if event.Kv.ModRevision != next {
				fail("event %d at revision %d, want %d (a gap or a repeat across the restart)", got, event.Kv.ModRevision, next)
			}
			if want := fmt.Sprintf("resume/%03d", got); string(event.Kv.Key) != want {
				fail("event %d is %s, want %s", got, event.Kv.Key, want)
			}
			next++
			got++
		}
	}
}

func resumeMain(endpoint string, args []string) {
	n, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "usage: clientcheck <endpoint> resume <n>")
		os.Exit(2)
	}
	resume(endpoint, n)
}
