using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Cluster.Coordinator.Api;
using Cluster.Shared.Jobs;

namespace Cluster.Tests.Unit.Security;

/// <summary>
/// The job-spec parser of POST /api/jobs on random and mutated JSON: it never throws, and it
/// either accepts a spec that validates or names each problem as "field: ...".
/// </summary>
[Trait("Tier", "unit")]
public sealed partial class JobSpecParserFuzzTests
{
    private static readonly byte[] Valid = Encoding.UTF8.GetBytes(
        """{"model":"cnn","dataset":"fashion-mnist","epochs":2,"batchSize":64,"workers":2,"seed":1,"trainLimit":0,"testLimit":0,"device":"auto","scheme":"ps","sync":"bsp","dataDir":null,"optimizer":{"kind":"adam","learningRate":0.001,"beta1":0.9,"beta2":0.999,"epsilon":1e-8,"weightDecay":0,"momentum":0,"dampening":0,"nesterov":false}}""");

    private static readonly string[] Fields =
        ["model", "dataset", "epochs", "batchSize", "workers", "seed", "trainLimit", "testLimit", "device", "scheme", "sync", "dataDir", "optimizer"];

    private static readonly string[] OptimizerFields = ["kind", "learningRate", "beta1", "beta2", "epsilon", "weightDecay", "momentum", "dampening", "nesterov"];

    private static readonly string[] Values =
        ["null", "0", "-1", "1", "2147483647", "2147483648", "-2147483649", "9223372036854775808", "1e308", "1e309", "-0", "0.5", "NaN", "\"NaN\"", "\"Infinity\"",
         "\"\"", "\"cnn\"", "\"cuda:-1\"", "\"cuda:99999999999\"", "\"../../etc\"", "true", "[]", "[1,2]", "{}", "{\"$type\":\"System.Diagnostics.Process\"}", "\"\\u0000\"",
         "\"" + new string('a', 5000) + "\""];

    [Fact]
    public void The_valid_spec_parses()
    {
        var (spec, errors) = JobSpecJson.Parse(Valid);
        Assert.Empty(errors);
        Assert.Equal("cnn", spec!.Model);
    }

    [Fact]
    public void Mutated_bytes_never_crash_the_parser_and_every_error_names_a_field()
    {
        Fuzz.Run(seed: 6, cases: 4000, (random, _) => Check(Fuzz.Mutate(random, Valid)));
    }

    [Fact]
    public void Random_values_in_every_field_never_crash_the_parser_and_every_error_names_a_field()
    {
        Fuzz.Run(seed: 66, cases: 3000, (random, _) =>
        {
            using var document = JsonDocument.Parse(Valid);
            var fields = document.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetRawText());
            var optimizer = document.RootElement.GetProperty("optimizer").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetRawText());
            for (int edits = random.Next(1, 4); edits > 0; edits--)
            {
                if (random.Next(3) == 0) optimizer[OptimizerFields[random.Next(OptimizerFields.Length)]] = Values[random.Next(Values.Length)];
                else fields[Fields[random.Next(Fields.Length)]] = Values[random.Next(Values.Length)];
            }
            if (fields["optimizer"].StartsWith('{') && fields["optimizer"].Contains("kind", StringComparison.Ordinal))
                fields["optimizer"] = "{" + string.Join(",", optimizer.Select(p => $"\"{p.Key}\":{p.Value}")) + "}";
            if (random.Next(10) == 0) fields["unknownField"] = "1";
            Check(Encoding.UTF8.GetBytes("{" + string.Join(",", fields.Select(p => $"\"{p.Key}\":{p.Value}")) + "}"));
        });
    }

    [Fact]
    public void Random_bytes_never_crash_the_parser()
    {
        Fuzz.Run(seed: 666, cases: 2000, (random, _) => Check(Fuzz.RandomBytes(random, 200)));
    }

    private static void Check(byte[] json)
    {
        var (spec, errors) = JobSpecJson.Parse(json);
        if (spec is not null)
        {
            Assert.Empty(errors);
            Assert.Empty(spec.Validate());
            var roundTrip = JobSpecification.FromProto(spec.ToProto(), spec.Workers);
            Assert.Empty(roundTrip.Validate());
            return;
        }
        Assert.NotEmpty(errors);
        foreach (string error in errors)
            Assert.Matches(FieldPrefix(), error);
    }

    /// <summary>Every message starts with the field it is about: "epochs: ...", "body: ...".</summary>
    [GeneratedRegex("^[a-z][a-z0-9-]*: ")]
    private static partial Regex FieldPrefix();
}

/// <summary>Inputs that crashed or slipped through the parser before it respected nullability.</summary>
[Trait("Tier", "unit")]
public sealed class JobSpecParserRegressionTests
{
    [Theory]
    [InlineData("""{"optimizer":null}""", "body: not a job specification")]
    [InlineData("""{"device":null}""", "body: not a job specification")]
    [InlineData("""{"model":null}""", "body: not a job specification")]
    [InlineData("""{"$type":"System.Diagnostics.Process, System"}""", "body: not a job specification")]
    [InlineData("""{"epochs":1e400}""", "body: not a job specification")]
    [InlineData("""{"optimizer":{"learningRate":"NaN"}}""", "lr: NaN is out of range; expected a finite number > 0")]
    [InlineData("""null""", "body: missing")]
    [InlineData("""{"epochs":0,"workers":5000}""", "epochs: 0 is out of range; expected 1 to 10000")]
    public void A_bad_body_gets_a_clear_error_naming_what_is_wrong(string json, string expected)
    {
        var (spec, errors) = JobSpecJson.Parse(System.Text.Encoding.UTF8.GetBytes(json));

        Assert.Null(spec);
        Assert.StartsWith(expected, errors[0], StringComparison.Ordinal);
    }
}
