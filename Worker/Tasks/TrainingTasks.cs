using Cluster.Shared.Jobs;
using Cluster.Worker.Checkpoints;
using Cluster.Worker.Data;
using Cluster.Worker.Models;
using Cluster.Sdk;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.Worker.Tasks;

/// <summary>Builds a job's task: loads its data, builds its model from the seed, applies fine-tuning, moves it to the device.</summary>
public static class TrainingTasks
{
    public static ITrainingTask Create(JobSpecification spec, Device device)
    {
        if (spec.AssemblyPath is { } assembly)
        {
            var context = new TaskContext(spec.DataDir, spec.Seed, spec.TrainLimit, spec.TestLimit, device);
            var task = UserTaskLoader.Create(assembly, spec.TaskType ?? "", context);
            FineTuning.Apply(task.Model, spec);
            return task;
        }
        if (spec.IsLanguageModel)
        {
            var corpus = TextCorpus.Load(spec.DataDir);
            int vocabulary = corpus.Vocabulary.Count;
            var model = Prepare(ModelZoo.Create(spec.Model, spec.Seed, ModelShape.Text(vocabulary, TextCorpus.Context)), spec, device);
            return new LanguageModelTask(model, corpus.Train.Take(spec.TrainLimit), corpus.Validation.Take(spec.TestLimit), vocabulary, device);
        }
        var data = DatasetCatalog.Load(spec.Dataset, spec.DataDir);
        var train = data.Train.Take(spec.TrainLimit);
        if (spec.Model == "gan")
        {
            var gan = (Dcgan)Prepare(ModelZoo.Create(spec.Model, spec.Seed, ModelShape.Image(train.Channels, train.Height, train.Width, 2)), spec, device);
            return new GanTask(gan, train, data.Test.Take(spec.TestLimit), spec.Seed, device);
        }
        var shape = ModelShape.Image(train.Channels, train.Height, train.Width, train.ClassCount);
        var classifier = Prepare(ModelZoo.Create(spec.Model, spec.Seed, shape), spec, device);
        return new ImageClassificationTask(classifier, train, data.Test.Take(spec.TestLimit), new Losses(spec.Loss), device);
    }

    private static nn.Module<Tensor, Tensor> Prepare(nn.Module<Tensor, Tensor> model, JobSpecification spec, Device device)
    {
        FineTuning.Apply(model, spec);
        model.to(device);
        return model;
    }
}
