// The sidecar as Go users meet it: redigo and go-redis (v5, the one
// Debian packages; Go modules cannot be fetched where the suite runs),
// unchanged: commands, pipelines, MULTI/EXEC mixing SESSION.* and ordinary
// commands, EXECABORT and DISCARD, and go-redis's cluster client.
//
// Usage: go run contract.go <port> <standalone|upstream|cluster>
// Run by tests/go_clients.rs in GOPATH mode on Debian's packages.
package main

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	redigo "github.com/gomodule/redigo/redis"
	goredis "gopkg.in/redis.v5"
)

var (
	addr     string
	mode     string
	upstream bool
	tag      = fmt.Sprintf("go%d:", time.Now().UnixNano())
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func check(what string, got, want interface{}) {
	if !reflect.DeepEqual(got, want) {
		fail("%s: got %#v, want %#v", what, got, want)
	}
}

func must(what string, err error) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

// redigo: plain commands, a pipeline, and transactions.
func redigoContract() {
	c, err := redigo.Dial("tcp", addr)
	must("redigo dial", err)
	defer c.Close()
	sid := tag + "rg"
	id, err := redigo.String(c.Do("SESSION.CREATE", "ID", sid, "USER", tag+"u", "ATTR", "n", "1"))
	must("redigo SESSION.CREATE", err)
	check("redigo SESSION.CREATE", id, sid)
	n, err := redigo.Int(c.Do("SESSION.ATTR.INCRBY", sid, "n", 2))
	must("redigo SESSION.ATTR.INCRBY", err)
	check("redigo SESSION.ATTR.INCRBY", n, 3)

	// A pipeline: every reply, in order.
	must("send", c.Send("SESSION.ATTR.SET", sid, "k", "v"))
	must("send", c.Send("SESSION.ATTR.GET", sid, "k"))
	must("send", c.Send("PING"))
	must("send", c.Send("SESSION.EXISTS", sid, tag+"none"))
	must("flush", c.Flush())
	version, err := redigo.Int(c.Receive())
	must("pipelined ATTR.SET", err)
	check("pipelined ATTR.SET version", version, 3)
	values, err := redigo.Strings(c.Receive())
	must("pipelined ATTR.GET", err)
	check("pipelined ATTR.GET", values, []string{"v"})
	pong, err := redigo.String(c.Receive())
	must("pipelined PING", err)
	check("pipelined PING", pong, "PONG")
	exists, err := redigo.Int(c.Receive())
	must("pipelined EXISTS", err)
	check("pipelined EXISTS", exists, 1)

	// MULTI/EXEC: QUEUED each, replies in order.
	must("send", c.Send("MULTI"))
	must("send", c.Send("SESSION.ATTR.INCRBY", sid, "n", 10))
	if upstream {
		must("send", c.Send("SET", tag+"k", "1"))
		must("send", c.Send("INCR", tag+"k"))
	}
	must("send", c.Send("SESSION.ATTR.GET", sid, "n"))
	replies, err := redigo.Values(c.Do("EXEC"))
	must("redigo EXEC", err)
	if upstream {
		check("EXEC length", len(replies), 4)
		check("EXEC INCR", replies[2], int64(2))
	} else {
		check("EXEC length", len(replies), 2)
	}
	check("EXEC ATTR.INCRBY", replies[0], int64(13))
	last, err := redigo.Strings(replies[len(replies)-1], nil)
	must("EXEC ATTR.GET", err)
	check("EXEC ATTR.GET", last, []string{"13"})

	// A queue-time error aborts; DISCARD runs nothing.
	_, err = c.Do("MULTI")
	must("MULTI", err)
	_, err = c.Do("SESSION.DEL", sid)
	must("queue SESSION.DEL", err)
	_, err = c.Do("SESSION.GET")
	if err == nil {
		fail("SESSION.GET without an id was queued")
	}
	_, err = c.Do("EXEC")
	if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
		fail("EXEC after a queue-time error: %v", err)
	}
	_, err = c.Do("MULTI")
	must("MULTI", err)
	_, err = c.Do("SESSION.DEL", sid)
	must("queue SESSION.DEL", err)
	ok, err := redigo.String(c.Do("DISCARD"))
	must("DISCARD", err)
	check("DISCARD", ok, "OK")
	exists, err = redigo.Int(c.Do("SESSION.EXISTS", sid))
	must("SESSION.EXISTS", err)
	check("the session outlives DISCARD", exists, 1)
	deleted, err := redigo.Int(c.Do("SESSION.DEL", sid))
	must("SESSION.DEL", err)
	check("SESSION.DEL", deleted, 1)
}

// go-redis: its Client with a pipeline and a transaction pipeline, and its
// ClusterClient, which finds the sidecar a one-node cluster at its own
// address.
func goredisContract() {
	client := goredis.NewClient(&goredis.Options{Addr: addr})
	defer client.Close()
	sid := tag + "gr"
	create := goredis.NewStringCmd("SESSION.CREATE", "ID", sid, "USER", tag+"u")
	must("go-redis SESSION.CREATE", client.Process(create))
	check("go-redis SESSION.CREATE", create.Val(), sid)

	pipe := client.Pipeline()
	set := goredis.NewIntCmd("SESSION.ATTR.SET", sid, "k", "v")
	get := goredis.NewStringSliceCmd("SESSION.ATTR.GET", sid, "k")
	pipe.Process(set)
	ping := pipe.Ping()
	pipe.Process(get)
	_, err := pipe.Exec()
	must("go-redis pipeline", err)
	check("pipelined ATTR.SET", set.Val(), int64(2))
	check("pipelined PING", ping.Val(), "PONG")
	check("pipelined ATTR.GET", get.Val(), []string{"v"})

	tx := client.TxPipeline()
	incr := goredis.NewIntCmd("SESSION.ATTR.INCRBY", sid, "n", 5)
	tx.Process(incr)
	var ordinary *goredis.IntCmd
	if upstream {
		tx.Set(tag+"tx", "1", 0)
		ordinary = tx.Incr(tag + "tx")
	}
	read := goredis.NewStringSliceCmd("SESSION.ATTR.GET", sid, "n")
	tx.Process(read)
	_, err = tx.Exec()
	must("go-redis TxPipeline", err)
	check("tx ATTR.INCRBY", incr.Val(), int64(5))
	check("tx ATTR.GET", read.Val(), []string{"5"})
	if upstream {
		check("tx INCR", ordinary.Val(), int64(2))
	}

	cluster := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{addr}})
	defer cluster.Close()
	nodes, err := cluster.ClusterSlots().Result()
	must("CLUSTER SLOTS", err)
	check("cluster nodes", len(nodes), 1)
	check("the one node is the sidecar", nodes[0].Nodes[0].Addr, addr)
	attr := goredis.NewStringSliceCmd("SESSION.ATTR.GET", sid, "n")
	must("cluster SESSION.ATTR.GET", cluster.Process(attr))
	check("cluster SESSION.ATTR.GET", attr.Val(), []string{"5"})
	if upstream {
		// Keys in every slot range: the sidecar routes them.
		for i := 0; i < 20; i++ {
			key := fmt.Sprintf("%sc%d", tag, i)
			must("cluster SET", cluster.Set(key, i, 0).Err())
		}
		for i := 0; i < 20; i++ {
			key := fmt.Sprintf("%sc%d", tag, i)
			value, err := cluster.Get(key).Int64()
			must("cluster GET", err)
			check("cluster GET "+key, value, int64(i))
		}
	}
	del := goredis.NewIntCmd("SESSION.DEL", sid)
	must("go-redis SESSION.DEL", client.Process(del))
	check("go-redis SESSION.DEL", del.Val(), int64(1))
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: contract.go <port> <standalone|upstream|cluster>")
	}
	addr = "127.0.0.1:" + os.Args[1]
	mode = os.Args[2]
	upstream = mode == "upstream" || mode == "cluster"
	redigoContract()
	goredisContract()
	fmt.Println("ok: redigo go-redis.v5")
}
