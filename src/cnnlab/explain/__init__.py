"""See inside a trained network: filters and feature maps (`layers`), attributions through captum and the
deletion test that says which to trust (`attributions`), the feature space in 2-D (`embedding`), their
pictures (`pictures`), and `cnnlab explain` putting them together (`run`)."""
