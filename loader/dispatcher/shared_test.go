package dispatcher

import "testing"

// libxdp's programs become members: their kernel names must make valid
// member names (and pin names), and their keys never meet the loader's.
func TestLibxdpMemberNamesAndKeys(t *testing.T) {
	for in, want := range map[string]string{"xdp_count": "xdp_count", "xdp.pass": "xdp_pass", "a-b/c": "a_b_c", "": ""} {
		got := programName(in)
		if got != want {
			t.Errorf("programName(%q) = %q, want %q", in, got, want)
		}
		if err := checkMember("libxdp-7", got); err != nil {
			t.Errorf("member named %q refused: %v", got, err)
		}
	}
	if !IsLibxdpKey("libxdp-42") || IsLibxdpKey("0123456789abcdef01234567") {
		t.Error("IsLibxdpKey does not tell libxdp's keys from the loader's")
	}
}
