// Command kstatus prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library
// Flux and kpt use to read an object's health, says of each object given to it.
//
// Input: a stream of JSON objects on stdin (whole Kubernetes objects, as kubectl get -o json
// prints them). Output: one JSON line per object, {"status": "...", "message": "..."}; a line
// {"error": "..."} for an object kstatus cannot compute. Numbers are decoded as unstructured
// does (int64), or the generation lookups fail.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func main() {
	decoder := json.NewDecoder(bufio.NewReader(os.Stdin))
	encoder := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: reading input: %v\n", err)
			os.Exit(2)
		}
		out := verdict{}
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(raw); err != nil {
			out.Error = err.Error()
		} else if result, err := status.Compute(object); err != nil {
			out.Error = err.Error()
		} else {
			out.Status = result.Status.String()
			out.Message = result.Message
		}
		if err := encoder.Encode(out); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: writing output: %v\n", err)
			os.Exit(2)
		}
	}
}
