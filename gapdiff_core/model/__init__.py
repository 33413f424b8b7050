"""The protection function: the generator (official parameter names), its packed CPU form, checkpoint I/O
(safetensors with metadata, official .pth without unpickling), the Protector (photos in, protected photos out)
and ONNX export."""
