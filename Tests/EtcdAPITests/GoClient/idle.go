package main

import (
	"context"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
	"google.golang.org/grpc"
)

// idle: a client with keep-alive pings (clientv3's DialKeepAliveTime; grpc-go sends
// them at most every 10 s, and, as etcd's server permits, only while a stream is
// open) and a watch open, idle for 32 s (three pings), keeps its connection and its
// watch: the server's keep-alive policy allows etcd clients' pings (one that strikes
// after two pings too soon would end it).
func idle(endpoint string) {
	events := &connectionEvents{}
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 20 * time.Second,
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithStatsHandler(events)}})
	check(err, "connect")
	defer client.Close()
	ctx, cancel := timeout()
	defer cancel()
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	watch := client.Watch(watchCtx, "idle/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if created := <-watch; !created.Created {
		fail("the watch was not created: %v", created)
	}
	time.Sleep(32 * time.Second)
	_, err = client.Put(ctx, "idle/b", "2")
	check(err, "put after the idle time")
	select {
	case response := <-watch:
		if len(response.Events) != 1 || string(response.Events[0].Kv.Key) != "idle/b" {
			fail("the watch got %v after the idle time", response)
		}
	case <-time.After(20 * time.Second):
		fail("the watch got nothing after the idle time")
	}
	if ends := atomic.LoadInt64(&events.ends); ends != 0 {
		fail("the server ended an idle client's connection %d time(s)", ends)
	}
}
