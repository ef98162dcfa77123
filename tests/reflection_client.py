"""A generic gRPC client that knows nothing of lift's proto: it discovers services and
message types through server reflection (as grpcurl does), then calls SubmitJob and GetJob
with messages built from the discovered descriptors. Prints one JSON line."""
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
database = ProtoReflectionDescriptorDatabase(channel)
services = list(database.get_services())
service = DescriptorPool(database).FindServiceByName("lift.v1.LiftService")


def call(method_name, body):
    method = service.FindMethodByName(method_name)
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    rpc = channel.unary_unary(
        f"/{service.full_name}/{method_name}",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return json_format.MessageToDict(rpc(json_format.ParseDict(body, request_type())))


submitted = call(
    "SubmitJob",
    {"documents": [{"title": "Vellmar", "text": "The keeper is Oskar Tenby. He keeps a cat."}]},
)
job_id = submitted["jobId"]
status = call("GetJob", {"jobId": job_id})
print(json.dumps({
    "services": services,
    "methods": [m.name for m in service.methods],
    "job_id": job_id,
    "state": status["state"],
    "sentences_total": status.get("sentencesTotal", 0),
}))
