// Command podserver is the container of the node agent's integration tests: an HTTP server on --listen that
// answers /ready (503 when $READY is "false"), /file?path= (a file as the container sees it) and /env?name=.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "", "address to listen on")
	exitAfter := flag.Duration("exit-after", 0, "exit with code 3 after this long")
	flag.Parse()
	if *exitAfter > 0 {
		go func() {
			time.Sleep(*exitAfter)
			os.Exit(3)
		}()
	}
	http.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if os.Getenv("READY") == "false" {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	http.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		_, _ = w.Write(data)
	})
	http.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getenv(r.URL.Query().Get("name")))
	})
	http.HandleFunc("/args", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Args)
	})
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
