package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The client build speaks gRPC itself: it links neither grpc-go, nor the
// CSI spec package, nor protobuf, nor net/http and its TLS stack, whose
// package initialisation was most of its start-up time.
func TestClientBuildLinksNoGRPC(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "bpfmount_cli", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	banned := []string{
		"google.golang.org/grpc", "github.com/container-storage-interface/spec",
		"google.golang.org/genproto", "github.com/bpfmount/bpfmount/driver/admin",
		"google.golang.org/protobuf", "net/http", "crypto/tls", "crypto/x509",
	}
	linked := map[string]bool{}
	for _, d := range deps {
		linked[d] = true
		if d == "github.com/bpfmount/bpfmount/driver/admin/adminapi" {
			continue // the admin messages, which import nothing of gRPC
		}
		for _, b := range banned {
			if d == b || strings.HasPrefix(d, b+"/") {
				t.Errorf("the client build links %s", d)
			}
		}
	}
	// The list is the client build's: it has the wire client.
	for _, want := range []string{"github.com/bpfmount/bpfmount/internal/grpcwire", "github.com/bpfmount/bpfmount/internal/csiwire"} {
		if !linked[want] {
			t.Errorf("the client build does not link %s: is go list answering for it?", want)
		}
	}
}
