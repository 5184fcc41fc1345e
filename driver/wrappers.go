package driver

import "google.golang.org/protobuf/types/known/wrapperspb"

func wrapperspbBool(b bool) *wrapperspb.BoolValue { return wrapperspb.Bool(b) }
