using System.CommandLine;
using Cluster.Shared.Security;

namespace Cluster.Cli.Commands;

/// <summary>`cluster secret` and `cluster certs`: the material a cluster's members share.</summary>
public static class SecurityCommands
{
    public static Command Secret()
    {
        var file = new Option<string?>("--out") { Description = "Write it to this new file (readable by you only) instead of printing it" };
        var command = new Command("secret", "Make a new random cluster secret (32 random bytes, base64url)") { file };
        command.SetAction(parse =>
        {
            var secret = ClusterSecret.Generate();
            if (parse.GetValue(file) is { } path)
            {
                secret.WriteTo(path);
                Console.WriteLine($"Wrote a new cluster secret to {path}; give it to every member with --secret-file {path}");
            }
            else Console.WriteLine(secret.Value);
            return 0;
        });
        return command;
    }

    public static Command Certificates()
    {
        var output = new Option<string>("--out") { Description = "Directory to write the files into", DefaultValueFactory = _ => "certs" };
        var hosts = new Option<string[]>("--host") { Description = "Host name or IP the members are reached at (repeat it); localhost, 127.0.0.1 and ::1 are always included", AllowMultipleArgumentsPerToken = true };
        var days = new Option<int>("--days") { Description = "Validity in days", DefaultValueFactory = _ => 365 };
        var command = new Command("certs",
            $"Make a self-signed development CA and a member certificate signed by it: {CertificateFactory.AuthorityFile}, {CertificateFactory.AuthorityKeyFile}, {CertificateFactory.MemberFile}, {CertificateFactory.MemberKeyFile}. " +
            $"Copy the directory without {CertificateFactory.AuthorityKeyFile} to every machine and pass --tls-dir")
            { output, hosts, days };
        command.SetAction(parse =>
        {
            int validity = parse.GetValue(days);
            if (validity is < 1 or > 3650) throw new Api.CliException($"days: {validity} is out of range; expected 1 to 3650", exitCode: 2);
            string directory = Path.GetFullPath(parse.GetValue(output)!);
            string[] names = parse.GetValue(hosts) ?? [];
            CertificateFactory.WriteDevelopmentSet(directory, names, TimeSpan.FromDays(validity));
            Console.WriteLine($"Wrote a development CA and a member certificate for {string.Join(", ", names.Concat(["localhost", "127.0.0.1", "::1"]))} to {directory}");
            Console.WriteLine($"Keep {CertificateFactory.AuthorityKeyFile} off the cluster's machines; start every role with --tls-dir {directory} (add --mtls to require member certificates)");
            return 0;
        });
        return command;
    }
}
